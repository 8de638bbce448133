"""The Makefile's asv targets (`make bench`, `make bench-compare`, `make bench-publish`): the steps
that asv leaves to a person at a console or does not do for an `existing` environment.

    python tools/bench.py machine             asv's machine info, its defaults, unless already set
    python tools/bench.py source COMMIT       print a folder holding COMMIT's tapegrad/ (extracted once)
    python tools/bench.py check-results       exit 2, saying what to run, unless this machine has results
    python tools/bench.py check-base BASE     the same for BASE's results
    python tools/bench.py compare BASE        HEAD against BASE as `asv continuous` prints and judges it

`compare` prints asv's own table (sorted by ratio; a benchmark that changed significantly marked
+ or -, one that started failing !) and exits 1 on what `asv continuous` counts as a regression:
slower than BASE by more than the factor and, where both sides have several samples, by more
than their spread. `asv continuous` itself cannot run here: it builds each commit in an
environment of its own, while this project times in its .venv. BASE's results are the ones
`make bench` recorded at BASE, or `make bench COMMIT=BASE`: today's suite against BASE's
tapegrad, put first on the path of the processes asv times in.
"""
import argparse
import os
import shutil
import subprocess
import sys

from asv.benchmarks import Benchmarks
from asv.commands.compare import Compare
from asv.config import Config
from asv.console import log
from asv.machine import Machine, MachineCollection
from asv.results import iter_results_for_machine_and_hash
from asv.util import UserError


class BenchError(Exception):
    """Said to the user, with what to run first; exit status 2 (1 is kept for a regression)."""


def git(*args):
    out = subprocess.run(["git", *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def resolve(name):
    return git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")


def load_config(path):
    """asv reads the config's paths from the config's folder (it changes into it); so do we."""
    conf = Config.load(path)
    folder = os.path.dirname(os.path.abspath(path))
    conf.results_dir = os.path.join(folder, conf.results_dir)
    conf.env_dir = os.path.join(folder, conf.env_dir)
    return conf


def commit_source(conf, name):
    """A folder with the commit's tapegrad/ in it, extracted once into asv's env_dir."""
    commit = resolve(name)
    if commit is None:
        raise BenchError(f"bench: unknown COMMIT={name}: no commit, branch or tag of that name here")
    folder = os.path.join(conf.env_dir, f"src-{commit[:12]}")
    if not os.path.isdir(folder):
        part = folder + ".part"  # renamed when complete: an interrupted extraction is redone
        shutil.rmtree(part, ignore_errors=True)
        os.makedirs(part)
        archive = subprocess.Popen(["git", "archive", commit, "tapegrad"], stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", part], stdin=archive.stdout)
        if archive.wait() != 0 or untar.returncode != 0:
            shutil.rmtree(part, ignore_errors=True)
            raise BenchError(f"bench: could not extract tapegrad/ from COMMIT={name} ({commit[:8]})")
        os.rename(part, folder)
    return folder


def has_results(conf, machine, commit):
    return any(True for _ in iter_results_for_machine_and_hash(conf.results_dir, machine, commit))


def results(conf, machine, commit, names):
    """The commit's results for the benchmarks ``names``, as `asv continuous` hands them to the table."""
    for result in iter_results_for_machine_and_hash(conf.results_dir, machine, commit):
        for key in result.get_all_result_keys():
            if key in names:
                params = result.get_result_params(key)
                yield (key, params, result.get_result_value(key, params), result.get_result_stats(key, params),
                       result.get_result_samples(key, params), result.benchmark_version.get(key),
                       result.params["machine"], result.env_name)


def machine_info(machine):
    """`asv machine --yes`, once: until it is set, asv run asks on a console and fails without one."""
    try:
        MachineCollection.load(machine)
    except UserError:
        info = Machine.get_defaults()
        MachineCollection.save(machine, dict(info, machine=machine))
        print(f"bench: asv's machine info for {machine} set to its defaults (`asv machine` changes it)")


def check_results(conf, machine):
    folder = os.path.join(conf.results_dir, machine)
    if not (os.path.isdir(folder) and any(name.endswith(".json") and name != "machine.json"
                                          for name in os.listdir(folder))):
        raise BenchError(f"bench-publish: no results for machine {machine} in {conf.results_dir} "
                         "yet: run make bench first (make bench QUICK=1 for a quick one)")


def check_base(conf, machine, base_name):
    """BASE's full hash, once it is known to have results to compare against."""
    base = resolve(base_name)
    if base is None:
        raise BenchError(f"bench-compare: unknown base BASE={base_name}: no commit, branch or tag "
                         "of that name here (BASE=main, BASE=HEAD~1 or a commit hash)")
    if base == resolve("HEAD"):
        raise BenchError(f"bench-compare: BASE={base_name} is the checked-out commit {base[:8]}: "
                         "nothing to compare against; name an earlier commit (BASE=HEAD~1)")
    if not has_results(conf, machine, base):
        raise BenchError(f"bench-compare: no results for BASE={base_name} ({base[:8]}) on machine "
                         f"{machine} in {conf.results_dir}. Record them first (today's suite timed "
                         f"on BASE's tapegrad, no checkout needed):\n    make bench COMMIT={base[:8]}\n"
                         "then run make bench-compare again.")
    return base


def compare(conf, machine, base_name, factor, bench):
    base = check_base(conf, machine, base_name)
    head = resolve("HEAD")
    if not has_results(conf, machine, head):
        raise BenchError(f"bench-compare: no results for HEAD ({head[:8]}) on machine {machine}: "
                         "run make bench first")
    # The suite as HEAD's run discovered it, narrowed as that run was: no row for a benchmark that
    # BASE had and HEAD dropped, nor for one of HEAD's results that an earlier run left.
    names = set(Benchmarks.load(conf, regex=bench or None))
    log.enable()
    worsened, improved = Compare.print_table(
        conf, base, head, factor=factor, split=False, machine=machine, sort="ratio",
        resultset_1=results(conf, machine, base, names), resultset_2=results(conf, machine, head, names),
        commit_names={base: base_name, head: git("rev-parse", "--abbrev-ref", "HEAD")})
    print()
    if worsened:
        print(f"SOME BENCHMARKS HAVE CHANGED SIGNIFICANTLY.\nPERFORMANCE DECREASED: slower than "
              f"{base_name} by more than the factor {factor:g} (marked + or !).")
    elif improved:
        print("SOME BENCHMARKS HAVE CHANGED SIGNIFICANTLY.\nPERFORMANCE INCREASED.")
    else:
        print("BENCHMARKS NOT SIGNIFICANTLY CHANGED.")
    return 1 if worsened else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="asv.conf.json")
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("machine")
    steps.add_parser("source").add_argument("commit")
    steps.add_parser("check-results")
    steps.add_parser("check-base").add_argument("base")
    step = steps.add_parser("compare")
    step.add_argument("base", help="the commit, branch or tag to compare against")
    step.add_argument("--factor", type=float, default=1.1,
                      help="a benchmark this many times slower than on BASE is a regression")
    step.add_argument("--bench", metavar="REGEX", help="only the benchmarks the run selected (asv run --bench)")
    args = parser.parse_args(argv)
    machine = Machine.get_unique_machine_name()  # what asv run files results under

    if args.step == "machine":
        machine_info(machine)
        return 0
    conf = load_config(args.config)
    try:
        if args.step == "source":
            print(commit_source(conf, args.commit))
        elif args.step == "check-results":
            check_results(conf, machine)
        elif args.step == "check-base":
            check_base(conf, machine, args.base)
        else:
            return compare(conf, machine, args.base, args.factor, args.bench)
    except BenchError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
