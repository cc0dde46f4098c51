"""Cost of a committee against its members one after another: energy + field on a large lattice
and one training step (double backward), measured side by side in one process.

Usage::

    python benchmarks/committee.py                 # square 48x48 and triangular 48x48, M = 4 (~2 min)
    python benchmarks/committee.py --quick         # a smoke run (seconds)
    python benchmarks/committee.py --members 2 4 8 --json out.json
    python benchmarks/committee.py --trainer-step --size 24 --batch 4   # the trainer's step: kernel vs vmapped

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


def measure_trainer_step(name: str, size: int, members: int, batch: int, repeats: int, dtype=torch.float32) -> dict:
    """One step of ``klmgraph.train.train``'s committee loop (member m on its own batch of
    ``batch`` configurations, field + 100 x energy loss, Adam) with the members' compiled kernel
    (``committee.fused``) and with the vmapped eager path, interleaved round by round."""
    from klmgraph.train import StackedBatch, predict_stacked, stacked_loss_terms

    graph = LATTICES[name](size)
    nets = []
    for k in range(members):
        torch.manual_seed(k)
        nets.append(klmgraph.ECNN.for_graph(graph))
    committee = Committee(nets).to(dtype)
    optimizer = torch.optim.Adam(committee.parameters(), lr=1e-6)  # small: the weights barely move
    prepared = committee.prepare(graph)
    spins = torch.stack([klmgraph.random_spins(graph, batch=batch, seed=m, dtype=dtype) for m in range(members)])
    gen = torch.Generator().manual_seed(1)
    step_batch = StackedBatch(spins, 0.01 * torch.randn(spins.shape, generator=gen).to(dtype),
                              torch.randn(members, batch, generator=gen).to(dtype))

    def step():
        energy, field = predict_stacked(committee, prepared, step_batch, training=True, members=True)
        field_mse, energy_mse = stacked_loss_terms(energy, field, step_batch)
        loss = (field_mse + 100.0 * energy_mse) * members
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times = {True: [], False: []}
    for fused in (True, False):  # warm-up: kernel build, plans
        committee.fused = fused
        step()
    for _ in range(repeats):
        for fused in (True, False):
            committee.fused = fused
            w, c = time.perf_counter(), time.process_time()
            step()
            times[fused].append((time.perf_counter() - w, time.process_time() - c))
    pick = lambda ts: (min(t[0] for t in ts), min(t[1] for t in ts))  # noqa: E731
    return {"lattice": name, "size": size, "sites": graph.num_nodes, "members": members, "batch": batch,
            "kernel": pick(times[True]), "vmapped": pick(times[False])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lattices", nargs="+", default=["square", "triangular"], choices=sorted(LATTICES))
    p.add_argument("--size", type=int, default=48, help="lattice side (default 48)")
    p.add_argument("--members", type=int, nargs="+", default=[4])
    p.add_argument("--batch", type=int, default=1, help="configurations per call (default 1)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="12x12, 2 repeats")
    p.add_argument("--trainer-step", action="store_true",
                   help="only the trainer's committee step, members' kernel against the vmapped path "
                        "(--batch configurations per member; the learn configs use 4)")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, repeats = (12, 2) if args.quick else (args.size, args.repeats)
    info = machine()
    print(f"# {info}; torch threads {args.threads}; float32; best of {repeats} (wall s / process CPU s)")
    rows = []
    if args.trainer_step:
        print(f"{'lattice':>10} {'N':>6} {'M':>3} {'B':>3} | {'kernel':>15} {'vmapped':>15} {'speed-up (CPU)':>14}")
        for name in args.lattices:
            for m in args.members:
                r = measure_trainer_step(name, size, m, args.batch, repeats)
                rows.append(r)
                print(f"{name:>10} {r['sites']:>6} {m:>3} {args.batch:>3} | {r['kernel'][0]:7.3f}/{r['kernel'][1]:7.3f} "
                      f"{r['vmapped'][0]:7.3f}/{r['vmapped'][1]:7.3f} {r['vmapped'][1] / r['kernel'][1]:14.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
        return rows
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
