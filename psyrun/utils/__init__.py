"""Small helpers shipped with psyrun."""
