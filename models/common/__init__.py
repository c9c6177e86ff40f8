"""Pieces every training recipe shares: seeding, run folders, curves and reports."""
