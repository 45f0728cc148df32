"""Explain the bill: feasibility and opportunity studies over real data."""
