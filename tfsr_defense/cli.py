"""What every command-line entry point shares: its own flags, help, one-line errors.

Each CLI module (``train``, ``evaluate``, ``export``, ...) defines its flags on
its own ``absl.flags.FlagValues`` (not the process-wide ``flags.FLAGS``), so
that several CLI modules can be imported into one process without absl's
DuplicateFlagError, and runs through :func:`run`:

    FLAGS = flags.FlagValues()
    flags.DEFINE_integer("steps", 50, "...", flag_values=FLAGS)

    def main(argv): ...

    def run():
      cli.run(main, FLAGS, prog="tfsr_defense.evaluate", doc=__doc__)

Conventions of :func:`run` (README "Bad input"):

* ``--help`` / ``-h`` / ``--helpfull``: the module's usage and its flags, exit 0;
* a bad flag (unknown name, bad value, failed validator, missing flag file):
  one line ``<prog>: error: ...`` on stderr, exit status 2;
* an exception of ``errors`` raised by ``main`` (default ValueError,
  FileNotFoundError): the same one line and status 2;
* KeyboardInterrupt: exit status 130 (``main`` prints what was saved).
"""

import sys

from absl import flags

__all__ = ["run", "run_report", "fail", "HELP_ARGS"]

HELP_ARGS = ("--help", "-h", "--helpfull", "-help", "--helpshort")


def fail(prog, message, status=2):
  """Print ``<prog>: error: <message>`` (one line) to stderr and exit with ``status``."""
  text = " ".join(str(message).split())
  print(f"{prog}: error: {text}", file=sys.stderr)
  sys.exit(status)


def run(main, flag_values, prog, doc="", argv=None, errors=(ValueError, FileNotFoundError)):
  """Parse ``argv`` with ``flag_values`` and call ``main(remaining_argv)``.

  Args:
    main: fn(argv list) -> None; argv[0] is the program name.
    flag_values: the module's ``absl.flags.FlagValues``.
    prog: program name for messages, e.g. 'tfsr_defense.train'.
    doc: usage text printed above the flags by --help (the module docstring).
    argv: command line (default sys.argv).
    errors: exception types of ``main`` reported as one line with status 2.

  Exits:
    0 after --help; 2 on a bad flag or one of ``errors``; 130 on Ctrl-C.
  """
  argv = list(sys.argv if argv is None else argv)
  if any(a in HELP_ARGS for a in argv[1:]):
    print((doc or "").strip() + "\n")
    print(f"Flags of {prog}:")
    print(flag_values.get_help())
    sys.exit(0)
  try:
    remaining = flag_values(argv)
  except flags.Error as e:
    fail(prog, f"{e} (see --help)")
  if len(remaining) > 1:
    fail(prog, f"unexpected arguments {remaining[1:]} (flags are --name=value; see --help)")
  try:
    main(remaining)
  except errors as e:  # pylint: disable=catching-non-exception
    fail(prog, e)
  except KeyboardInterrupt:
    sys.exit(130)


def run_report(run_from_flags, summary_name="summary.md"):
  """The ``main`` body of a resumable report CLI (evaluate, evaluate_classifier).

  Calls ``run_from_flags()`` (-> dict(computed, skipped, report_dir)), prints
  the cell counts and the report's path; on Ctrl-C says that finished cells
  are kept, then re-raises (``run`` exits with status 130).
  """
  try:
    result = run_from_flags()
  except KeyboardInterrupt:
    print("Interrupted: finished cells are saved; re-run the same command to resume.",
          file=sys.stderr)
    raise
  print(f"{result['computed']} cells computed, {result['skipped']} already done. "
        f"Report: {result['report_dir']}/{summary_name}")
