"""Qt-free core of APEX Studio: GGUF reading, roles, types, plans, sizes, hardware, jobs."""
