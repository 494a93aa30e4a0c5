"""minivit.parallel: process grid, instrumented collectives and the parallel layouts.

One file per scheme (DESIGN.md section 3).  The process grid and communicators
are always passed explicitly; there is no module-level state.
"""
