"""Precision plans: profiles, the band rule, the plan and its exact size, tensor-type files, detection."""
