"""File safety: outputs that never clobber a source or each other, inputs read with bounds.

:mod:`.outputs` refuses an output that is a source or an existing file (without ``force``),
writes under unique temporary names while holding a lock on the final name, checks that what
is renamed into place is complete and was not touched by another writer, and cleans what a
killed run left. :mod:`.inputs` opens side inputs (calibration text, plan files, profiles)
as regular files only, with a size cap, so a FIFO or ``/dev/zero`` is refused, not read.
"""
