"""onnxruntime's check that a run is fed every input, in linear time.

`InferenceSession.run` first checks that no required input is missing from the feed:
for each of the session's inputs it searches the list of fed names, so a run of the rewritten
model with thousands of noise inputs compares millions of names (2001 inputs: ~43 ms a run,
while the run itself took ~1 ms). A session the check makes answers the same question with a
set; when an input is missing, onnxruntime's own check runs and raises its own error, word for
word, as before.
"""

from __future__ import annotations


def validate_in_linear_time(sess) -> None:
    """Give `sess` (an onnxruntime InferenceSession) a linear-time input check with the same
    outcome; a session without the private parts this relies on is left as it is."""
    slow = getattr(sess, "_validate_input", None)
    if not callable(slow) or not hasattr(sess, "_inputs_meta"):
        return

    def validate(feed_input_names) -> None:
        fed = set(feed_input_names)
        # onnxruntime's rule: an input not fed is missing unless its type is optional
        # (its list of inputs is read at each run: a provider fallback rebinds it)
        if any(i.name not in fed and not i.type.startswith("optional")
               for i in sess._inputs_meta):
            slow(feed_input_names)  # raises onnxruntime's own error

    sess._validate_input = validate
