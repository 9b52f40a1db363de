"""Graph facts and edits: random sites, shapes, names, node building, dim provenance."""
