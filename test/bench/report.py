#!/usr/bin/env python3
"""Turns the RESULT lines of the benchmark suites into tables, a CSV and a chart.

Each suite prints lines of the form (tab-separated)
    RESULT  suite  impl  params  unit  value  higher|lower
with medians already taken. For every (suite, params, unit) row this prints each
implementation's figure and its ratio to the row's reference: the suite's own reference
where it names one (nginx for accept and http, whose bars are set against it), else the
hand-written raw epoll program where the suite has one, else the best peer (the best
non-ioloop figure).
A ratio above 1 is better than the reference, whichever way the unit runs (higher or lower).
Each ioloop server of a row ("ioloop", and "ioloop-reuseport" where a suite runs the
reuseport mode beside the default) is also compared with the best peer.

Usage: report.py RESULTS_FILE OUT_DIR [TITLE]
Writes OUT_DIR/results.csv and, when gnuplot is installed, OUT_DIR/ratios.svg: ioloop's
ratio to the best peer for every row (one bar per ioloop server of the row).
"""
import collections
import csv
import os
import shutil
import subprocess
import sys

IOLOOP_IMPLS = ("ioloop", "ioloop-core", "ioloop-reuseport", "ioloop-pause")
# The ioloop servers compared with the best peer in the summary lines and the chart.
COMPARED_IMPLS = ("ioloop", "ioloop-reuseport", "ioloop-pause")
REFERENCE_IMPL = "raw-epoll"
# Suites whose bars are set against one peer: that peer is their reference.
SUITE_REFERENCES = {"accept": "nginx", "http": "nginx"}


def read_results(path):
    rows = collections.OrderedDict()
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 7 or fields[0] != "RESULT":
                continue
            _, suite, impl, params, unit, value, better = fields
            key = (suite, params, unit)
            rows.setdefault(key, {"better": better, "values": collections.OrderedDict()})
            rows[key]["values"][impl] = float(value)
    return rows


def ratio(value, reference, better):
    if value <= 0 or reference <= 0:
        return float("nan")
    return value / reference if better == "higher" else reference / value


def best_peer(values, better):
    peers = {k: v for k, v in values.items() if k not in IOLOOP_IMPLS and k != REFERENCE_IMPL}
    if not peers:
        return None, None
    pick = max if better == "higher" else min
    name = pick(peers, key=peers.get)
    return name, peers[name]


def main():
    results_path, out_dir = sys.argv[1], sys.argv[2]
    title = sys.argv[3] if len(sys.argv) > 3 else "ioloop vs peers"
    rows = read_results(results_path)
    os.makedirs(out_dir, exist_ok=True)

    csv_rows, chart = [], []
    suite = None
    for (row_suite, params, unit), row in rows.items():
        values, better = row["values"], row["better"]
        peer_name, peer_value = best_peer(values, better)
        suite_ref = SUITE_REFERENCES.get(row_suite)
        if suite_ref in values:
            ref_name = suite_ref
        else:
            ref_name = REFERENCE_IMPL if REFERENCE_IMPL in values else peer_name
        ref_value = values.get(ref_name) if ref_name else None
        if row_suite != suite:
            suite = row_suite
            ref_text = suite_ref or f"{REFERENCE_IMPL} where present, else the best peer"
            print(f"\n== {suite}  (ratio > 1: better than the reference; "
                  f"reference = {ref_text})")
        print(f"  {params}  [{unit}, {better} is better]")
        for impl, value in values.items():
            r = ratio(value, ref_value, better) if ref_value else float("nan")
            mark = "  (reference)" if impl == ref_name else ""
            print(f"    {impl:<17} {value:>14.2f}   x{r:5.2f}{mark}")
            csv_rows.append([row_suite, params, unit, better, impl, value,
                             ref_name or "", "" if r != r else f"{r:.3f}"])
        compared = [impl for impl in COMPARED_IMPLS if impl in values]
        if compared and peer_value:
            for impl in compared:
                vs_peer = ratio(values[impl], peer_value, better)
                print(f"    {impl} vs best peer ({peer_name}): x{vs_peer:.2f}")
                label = "" if impl == "ioloop" else f" {impl}"
                chart.append((f"{row_suite} {params} {unit}{label}", vs_peer))
        elif "ioloop" in values and REFERENCE_IMPL in values:
            chart.append((f"{row_suite} {params} vs raw", ratio(values["ioloop"],
                                                             values[REFERENCE_IMPL], better)))

    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suite", "params", "unit", "better", "impl", "value", "reference",
                    "ratio_to_reference"])
        w.writerows(csv_rows)
    print(f"\nCSV: {os.path.join(out_dir, 'results.csv')}")

    if chart and shutil.which("gnuplot"):
        data = os.path.join(out_dir, "ratios.dat")
        with open(data, "w") as f:
            for i, (label, r) in enumerate(chart):
                f.write(f'{i} "{label}" {r:.3f}\n')
        svg = os.path.join(out_dir, "ratios.svg")
        height = max(400, 22 * len(chart) + 120)
        script = f"""
set terminal svg size 900,{height} dynamic font "sans,11"
set output "{svg}"
set title "{title}: ioloop's ratio to the best peer (> 1 is better)"
set style fill solid 0.8
set boxwidth 0.7
set yrange [-1:{len(chart)}]
set ytics nomirror
set grid x
set xlabel "ratio (log scale)"
set logscale x 2
unset key
set arrow from 1, graph 0 to 1, graph 1 nohead lw 2 lc rgb "#aa0000"
plot "{data}" using (0.5*$3):1:(0.5*$3):(0.35):ytic(2) with boxxyerrorbars lc rgb "#3070b0"
"""
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
        print(f"chart: {svg}")
    elif chart:
        print("chart: gnuplot not installed (apt-get install gnuplot-nox); skipped")


if __name__ == "__main__":
    main()
