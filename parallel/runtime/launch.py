"""Which MPI ran, in a world of how many tasks, and the singleton trap.

On a cluster the job is started by the site's launcher (``srun``, or the
``mpiexec`` of the site's MPI), and mpi4py loads whichever ``libmpi`` it finds
first.  When the two do not belong together, ``MPI_Init`` cannot reach the
launcher and every task starts as a *singleton*: rank 0 of a world of 1.  N
tasks would then train N independent copies into the same output folder.

``open_world(script)`` is the first call of an entry point:

1. it imports ``mpi4py.MPI`` (through ``parallel/comm.py``, whose RuntimeError
   names the fix when no MPI library can be loaded);
2. when the environment shows a launch of several tasks (``launcher_tasks``)
   but ``COMM_WORLD`` has one process, every process prints the launcher's
   task count, the library mpi4py loaded and the fix, and exits 2, before
   anything is written;
3. it returns ``COMM_WORLD``.

``announce(comm)`` then prints, on world rank 0, the library's first
``MPI_Get_library_version`` line and the world size: the first line of a run.
"""
import os
import sys

# Task counts written by launchers into each task's environment.  A launch of 1
# task writes 1 (``mpirun -n 1``: PMI_SIZE=1 or OMPI_COMM_WORLD_SIZE=1), so only a
# count above 1 shows a multi-task launch.  SLURM_NTASKS is not one of them: it is
# the allocation's task count, set in the batch script and the salloc shell too,
# where a plain `python run/pretrain.py` is one process on purpose; srun writes the
# step's own count into SLURM_STEP_NUM_TASKS.
SIZE_VARIABLES = (
    ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun"),
    ("PMI_SIZE", "a PMI launcher: the mpiexec of MPICH or Intel MPI, srun --mpi=pmi2"),
    ("MV2_COMM_WORLD_SIZE", "MVAPICH's mpirun_rsh"),
    ("SLURM_STEP_NUM_TASKS", "srun"),
)
# PMIx launchers (srun --mpi=pmix, prterun) write the task's rank, not the count:
# a rank above 0 shows at least rank + 1 tasks.
RANK_VARIABLES = (("PMIX_RANK", "a PMIx launcher: srun --mpi=pmix, prterun"),)

FIX = ('start the job with the launcher of the MPI that mpi4py loads, or let '
       'mpi4py load the launcher\'s MPI: on a cluster install minivit without the mpich '
       'extra (python -m pip install -e .) and load the site\'s MPI (e.g. module load '
       'openmpi), or set MPI4PY_LIBMPI to the launcher\'s libmpi.so; under srun also give '
       'the --mpi plugin the site documents (e.g. srun --mpi=pmix). See README.md, '
       '"On a cluster".')


def _count(value):
    """``value`` as an int, or None when it is not a decimal integer (ignored then)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def launcher_tasks(environ=None):
    """``(tasks, evidence)`` when ``environ`` shows a launch of more than one task, else None.

    environ : a mapping of environment variables (default ``os.environ``).
    tasks : the largest count shown (for a PMIx rank r: r + 1, a lower bound).
    evidence : the variables that show it, e.g. ``"PMI_SIZE=2, set by a PMI launcher: ..."``.

    Any variable above 1 counts, whichever launcher is innermost: ``srun -n 4
    mpirun -n 1 python ...`` is also four copies of a one-process run.  Values
    that are not integers are ignored.
    """
    environ = os.environ if environ is None else environ
    found = []
    for name, who in SIZE_VARIABLES:
        n = _count(environ.get(name))
        if n is not None and n > 1:
            found.append((n, f"{name}={n}, set by {who}"))
    for name, who in RANK_VARIABLES:
        r = _count(environ.get(name))
        if r is not None and r > 0:
            found.append((r + 1, f"{name}={r}, set by {who}"))
    if not found:
        return None
    return max(n for n, _ in found), "; ".join(text for _, text in found)


def library_version():
    """First line of ``MPI.Get_library_version()`` of the library mpi4py loaded, blanks squeezed.

    E.g. ``"Open MPI v4.1.4, package: Debian OpenMPI, ..."`` or ``"MPICH Version: 5.0.2"``.
    """
    from mpi4py import MPI
    # Open MPI ends the string with a NUL byte
    lines = MPI.Get_library_version().replace("\x00", "").strip().splitlines()
    return " ".join(lines[0].split()) if lines else "unknown MPI library"


def library_path(maps="/proc/self/maps"):
    """File of the ``libmpi`` shared library mapped into this process, or None.

    Read from ``maps`` (Linux ``/proc/self/maps``); None where that file is absent
    or lists no ``libmpi.so*`` (other systems, static builds).
    """
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            for line in f:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith("libmpi.so"):
                    return path
    except OSError:
        pass
    return None


def describe_library():
    """``"<library_version> (<libmpi path>)"``: what mpi4py loaded, for messages and logs."""
    path = library_path()
    return library_version() + (f" ({path})" if path else "")


def _refuse(script, text):
    # every process prints and exits by itself: with no working MPI there is no
    # rank 0 to speak for the others, and nothing to abort
    sys.stdout.flush()
    print(f"{script}: error: {text}", file=sys.stderr, flush=True)
    sys.exit(2)


def singleton_trap_message(tasks, evidence, library):
    """The text of the refusal: the launcher's count, the library mpi4py loaded, the fix."""
    return (f"launched as one of {tasks} tasks, but this process is alone in an MPI world "
            f"of 1.\n  launcher: {evidence}\n  mpi4py loaded: {library}, which did not join "
            f"the launcher's job\n  Each task would train alone into the same output folder; "
            f"nothing was written.\n  Fix: {FIX}")


def open_world(script, environ=None):
    """``mpi4py.MPI.COMM_WORLD``, or exit 2 on every process (see the module docstring).

    script : name in the messages (``"pretrain.py"``).  environ : as in
    :func:`launcher_tasks`.  Raises ImportError when mpi4py is not installed and
    RuntimeError when it finds no MPI library.
    """
    from ..comm import MPI      # without a libmpi: RuntimeError naming the fix
    world = MPI.COMM_WORLD
    if world.Get_size() == 1:
        launch = launcher_tasks(environ)
        if launch is not None:
            _refuse(script, singleton_trap_message(*launch, describe_library()))
    return world


def announce(world, environ=None):
    """Print ``MPI: <library> (<path>); world size N`` on rank 0 of ``world`` (COMM_WORLD).

    A one-process run inside a Slurm allocation of several tasks (a batch
    script or salloc shell without srun) gets a hint to start it with srun.
    """
    if world.Get_rank() != 0:
        return
    environ = os.environ if environ is None else environ
    size = world.Get_size()
    hint = ""
    allocated = _count(environ.get("SLURM_NTASKS"))
    if size == 1 and allocated and allocated > 1 and "SLURM_STEP_NUM_TASKS" not in environ:
        hint = (f" (the Slurm allocation has SLURM_NTASKS={allocated} tasks: start with srun "
                "to use them)")
    print(f"MPI: {describe_library()}; world size {size}{hint}", flush=True)
    warning = mixed_checkout_warning(_package_dir("minivit"), _package_dir("minivit.parallel"))
    if warning:
        print(warning, file=sys.stderr, flush=True)


def _package_dir(name):
    """The checkout a package was imported from: the folder above its own."""
    from pathlib import Path
    return Path(sys.modules[name].__file__).resolve().parent.parent


def mixed_checkout_warning(model_root, parallel_root):
    """A warning line when ``minivit`` and ``minivit.parallel`` come from two checkouts, else "".

    Why: setup.py maps ``minivit.parallel`` to the checkout's ``parallel/``.  When
    ``python`` under mpirun is not the interpreter minivit was installed into (a
    pyenv shim, another venv first on PATH), ``minivit`` can come from the
    current folder and ``minivit.parallel`` from that interpreter's editable
    install of another checkout, with nothing else to show it (found by a trial
    run).  model_root, parallel_root: ``pathlib.Path`` of the two checkouts.
    """
    if model_root == parallel_root:
        return ""
    return (f"[minivit rank 0] warning: minivit is imported from {model_root} but "
            f"minivit.parallel from {parallel_root}: two checkouts are mixed; run "
            f"`mpirun -n N {sys.executable} ...` with the interpreter minivit is installed in, "
            "or reinstall it there (pip install -e .)")


def default_threads(world):
    """BLAS and Numba threads per rank when ``--threads`` is not given: this node's cores
    (``os.cpu_count()``) divided by the ranks of ``world`` (an mpi4py ``Intracomm``) on this
    node, at least 1.  Collective over ``world``.

    Dividing by the world size instead would give a 2-node job half the threads its
    cores allow.  A rank's --cpus-per-task (Slurm) is what ``--threads`` should be given.
    """
    from mpi4py import MPI
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return max(1, (os.cpu_count() or 1) // node.Get_size())
    finally:
        node.Free()
