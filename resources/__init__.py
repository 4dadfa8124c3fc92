"""Package data of APEX Studio: profiles, calibration and evaluation text, icons, styles."""
