"""The fault campaign's cases, one module per surface (``benchmarks/fault_campaign.py`` runs
them and prints the table)."""
