"""Cost of a committee against its members one after another: energy + field on a large lattice
and one training step (double backward), measured side by side in one process.

Usage::

    python benchmarks/committee.py                 # square 48x48 and triangular 48x48, M = 4 (~2 min)
    python benchmarks/committee.py --quick         # a smoke run (seconds)
    python benchmarks/committee.py --members 2 4 8 --json out.json

For each lattice and M it reports the best of ``--repeats`` calls (after a warm-up) of

* ``committee``: one :class:`~klmgraph.nn.committee.BoundCommittee` call returning every
  member's energy and field (``member_energies_and_fields``, one vmapped evaluation), and the
  mean only (``energy_and_field``, the integrator's hot path);
* ``loop``: the M members bound one by one, called in a Python loop;
* ``single``: one member;

and the same for one training step of the committee (``member_energies`` + loss + backward)
against M single steps. Process CPU time is reported next to wall time: with one thread it is
what the call costs on an idle core also on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import klmgraph  # noqa: E402
from klmgraph.nn.committee import Committee  # noqa: E402
from klmgraph.nn.forces import compute_field  # noqa: E402
from klmgraph.timing import machine  # noqa: E402

LATTICES = {"square": lambda L: klmgraph.square(L, L),
            "triangular": lambda L: klmgraph.triangular(L, L, t1=1.0, t3=-0.85)}


def best(fn, repeats):
    fn()  # warm-up: neighbour tables, plans
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def measure(name: str, size: int, members: int, batch: int, repeats: int) -> dict:
    graph = LATTICES[name](size)
    nets = []
    for k in range(members):
        torch.manual_seed(k)
        nets.append(klmgraph.ECNN.for_graph(graph))
    committee = Committee(nets)
    bound = committee.bind(graph)
    singles = [net.bind(graph) for net in nets]
    spins = klmgraph.random_spins(graph, batch=batch, seed=0).float()
    row = {"lattice": name, "size": size, "sites": graph.num_nodes, "members": members, "batch": batch}
    row["committee_all_members"] = best(lambda: bound.member_energies_and_fields(spins), repeats)
    row["committee_mean"] = best(lambda: bound.energy_and_field(spins), repeats)
    row["loop"] = best(lambda: [s.energy_and_field(spins) for s in singles], repeats)
    row["single"] = best(lambda: singles[0].energy_and_field(spins), repeats)

    # one training step: loss on the field (double backward)
    target = torch.zeros_like(spins)
    prepared = committee.prepare(graph)

    def committee_step():
        s = spins.expand(members, *spins.shape).clone().requires_grad_(True)
        e = committee.member_energies(s, prepared)
        loss = compute_field(e, s, training=True).sub(target).pow(2).mean() * members
        loss.backward()

    def loop_step():
        for net in nets:
            s = spins.clone().requires_grad_(True)
            e = net.energy(s, prepared)
            compute_field(e, s, training=True).sub(target).pow(2).mean().backward()

    row["train_committee"] = best(committee_step, repeats)
    row["train_loop"] = best(loop_step, repeats)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lattices", nargs="+", default=["square", "triangular"], choices=sorted(LATTICES))
    p.add_argument("--size", type=int, default=48, help="lattice side (default 48)")
    p.add_argument("--members", type=int, nargs="+", default=[4])
    p.add_argument("--batch", type=int, default=1, help="configurations per call (default 1)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="12x12, 2 repeats")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, repeats = (12, 2) if args.quick else (args.size, args.repeats)
    info = machine()
    print(f"# {info}; torch threads {args.threads}; float32; best of {repeats} (wall s / process CPU s)")
    rows = []
    print(f"{'lattice':>10} {'N':>6} {'M':>3} | {'committee':>15} {'mean only':>15} {'M singles':>15} "
          f"{'one':>15} {'ratio':>6} | {'train comm.':>15} {'train M':>15} {'ratio':>6}")
    for name in args.lattices:
        for m in args.members:
            r = measure(name, size, m, args.batch, repeats)
            rows.append(r)
            fmt = lambda t: f"{t[0]:7.3f}/{t[1]:7.3f}"  # noqa: E731
            print(f"{name:>10} {r['sites']:>6} {m:>3} | {fmt(r['committee_all_members'])} {fmt(r['committee_mean'])} "
                  f"{fmt(r['loop'])} {fmt(r['single'])} {r['committee_all_members'][1] / r['loop'][1]:6.2f} | "
                  f"{fmt(r['train_committee'])} {fmt(r['train_loop'])} "
                  f"{r['train_committee'][1] / r['train_loop'][1]:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
