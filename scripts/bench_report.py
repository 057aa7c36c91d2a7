#!/usr/bin/env python3
"""Turns loadgen's JSON lines into docs/benchmarks.md (tables, commands, machine) and a PNG chart.

usage: bench_report.py results.jsonl commands.txt out.md out.png
"""
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results_path, commands_path, md_path, png_path = sys.argv[1:5]
rows = [json.loads(line) for line in open(results_path) if line.strip()]
commands = [c.strip() for c in open(commands_path) if c.strip()]
SYSTEMS = ["relay", "relay (declared)", "relay (declared) (publish stream)", "relay-sim", "relay-sim (declared)",
           "relay (100 streams per connection)", "centrifugo (memory)", "centrifugo (redis)", "nats (raw)"]
SCENARIOS = ["fanout", "channels", "throughput", "channels (saturation)", "fanout (saturation)", "idle", "reconnect",
             "presence"]


def key(r):
    if r["scenario"] == "idle":
        return r.get("kib_per_idle_subscription") or 0
    if r["scenario"] == "presence":
        return (r.get("presence") or {}).get("steady_s") or 0
    return r["delivered_per_s"]


def get(system, scenario):
    """The median run of a system in a scenario (a real run, so its figures belong together),
    with the number of runs and the spread of the headline figure."""
    runs = sorted((r for r in rows if r["system"] == system and r["scenario"] == scenario), key=key)
    if not runs:
        return None
    median = dict(runs[len(runs) // 2])
    median["runs"] = len(runs)
    median["spread"] = (key(runs[0]), key(runs[-1]))
    return median


def spread(r, digits=0):
    lo, hi = r["spread"]
    return f"{fmt(lo, digits)}-{fmt(hi, digits)} ({r['runs']} runs)" if r["runs"] > 1 else "1 run"


def cmd(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:
        return "?"


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
machine = [
    f"- CPU: {os.cpu_count()} cores, {cpu_model()}",
    f"- memory: {mem_gib:.0f} GiB; kernel {platform.release()}",
    f"- load generator, servers and backends all on this one machine, over loopback",
    f"- nats-server: {cmd(['nats-server', '--version'])}; redis: {cmd(['redis-server', '--version'])}",
    f"- Centrifugo: {cmd([os.environ.get('CENTRIFUGO_BIN', 'centrifugo'), 'version'])}",
    # When the last result was written (the report may be made again later from the same results).
    f"- run at {datetime.fromtimestamp(os.path.getmtime(results_path), timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
]

fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"  # noqa: E731
pinning = next((r.get("pinning") for r in rows if r.get("pinning")), "not pinned")
out = ["# Benchmarks", "", "Made by `scripts/bench.sh` (which ran every command listed at the end) in one run on one",
       "machine. Each figure is the median of its runs, with the spread of the headline figure (min-max)",
       "beside it. Compare the systems within this run, as ratios, not against figures from elsewhere.",
       f"Pinning: {pinning}.", "", "## Machine", "", *machine, ""]

out += ["## How each system was run", "",
        "- **relay**: two relay replicas (release build) with NATS (JetStream on), Redis (append-only file)",
        "  and PocketBase; one subscriber per HTTP/2 connection, spread over both replicas; publishes over",
        "  gRPC to either replica, each acknowledged after Redis and NATS took it. **relay (declared)**:",
        "  the same with the channels declared as `examples/channels/chat.yaml` declares them (by the",
        "  operator's own code): a JetStream file-store stream captures them and each publish waits for",
        "  its ack. This is the path users run. **(publish stream)**: the same, publishing through",
        "  PublishStream calls (one per publishing connection) instead of unary Publish, as a service would.",
        "- **relay-sim**: the ceiling for the relay's publish path: the relay's own Redis append script",
        "  and NATS publish (JetStream-acked when declared) called directly, with no gRPC, auth or settings;",
        "  subscribers read NATS directly.",
        "- **centrifugo (memory | redis)**: Centrifugo v6, one node, its memory or Redis engine, history",
        "  and recovery on for the channels (as a chat needs); one WebSocket connection per subscriber",
        "  (JSON protocol); publishes through its server HTTP API. Defaults otherwise.",
        "- **presence**: each member a user of its own (PocketBase users for the relay, JWT subjects",
        "  for Centrifugo) on a connection of its own, joining one channel with presence and join/leave",
        "  events on (relay: `presence.joinLeave`, ttl 60s; Centrifugo: `presence`, `join_leave`,",
        "  `force_push_join_leave`); the member list and counts asked through each system's API (relay:",
        "  Presence/PresenceStats over gRPC; Centrifugo: its server HTTP API `presence`/`presence_stats`).",
        "- **nats (raw)**: core NATS subscribers on 10 connections and a fire-and-forget publisher: the",
        "  ceiling for the broker hop, with no auth, history, ordering or acks.",
        "", "Latency is publish call to delivery at the subscriber (same clock). CPU is in cores used by",
        "the system's server processes over the measured window (relay: relays + NATS + Redis;",
        "Centrifugo with Redis: Centrifugo + Redis); `front` is the relays / Centrifugo / nats-server alone.", ""]

for scenario in SCENARIOS:
    present = [get(s, scenario) for s in SYSTEMS]
    present = [r for r in present if r]
    if not present:
        continue
    if scenario.endswith("(saturation)"):
        about = ("Saturation search, one per system: the highest offered rate (doubling from the start rate, then "
                 "bisecting, 5 s trials) with everything delivered, no errors, the offered rate published and p99 "
                 "publish-to-delivery <= 50 ms. Each row is that trial (its rate in `published/s`); the note lists "
                 "every trial. Load: " + (present[0].get('params') or '').split(', ')[0] + ".")
    else:
        about = present[0].get('params') or ''
    out += [f"## {scenario}", "", about, ""]
    if scenario == "presence":
        out += ["| system | steady state s | spread | counted | joined s | Redis commands / join | join/leave events per member | Presence p50 / p99 ms (back to back) | Presence p50 / p99 ms (once a second) | listed | PresenceStats p50 / p99 ms | all gone s | server CPU (join) | server RSS MB |",
                "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in present:
            p = r["presence"]
            out.append(
                f"| {r['system']} | {fmt(p['steady_s'], 2)} | {spread(r, 2)} | {p['counted']:,} / {p['members']:,}{' (' + format(p['join_errors'], ',') + ' joins failed)' if p.get('join_errors') else ''} | {fmt(p['joined_s'], 2)} "
                f"| {fmt(p.get('redis_commands_per_join'), 1)} | {fmt(p['events_per_member'], 1)} "
                f"| {fmt(p['presence']['p50_ms'], 2)} / {fmt(p['presence']['p99_ms'], 2)} "
                f"| {fmt(p['presence_spaced']['p50_ms'], 2)} / {fmt(p['presence_spaced']['p99_ms'], 2)} | {p['listed']:,} "
                f"| {fmt(p['presence_stats']['p50_ms'], 2)} / {fmt(p['presence_stats']['p99_ms'], 2)} | {fmt(p['gone_s'], 2)} "
                f"| {fmt(r['server']['cpu_cores'], 2)} | {fmt(r['server']['rss_mb'])} |")
        out += ["", "Steady state: until the system counts every member (or its count stopped moving for 15 s: then",
                "`counted` says how many it kept). Redis commands per join: every command Redis ran during the join",
                "phase (those inside scripts included) over the members; the relay's include its Subscribe work",
                "(settings, history position). The relay reuses a Presence answer for up to a second (so a crowd",
                "asking costs one read per second per replica): the back-to-back figures are mostly reuse, the",
                "once-a-second ones a fresh read each. All gone: from the members disconnecting until the count",
                "is 0 (the relay keeps an ended stream 5 s, so that a reconnect is no leave and join)."]
    elif scenario == "idle":
        out += ["| system | KiB per idle subscription (front) | spread | front RSS MB | server RSS MB | CPU idle (cores) | note |",
                "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
        for r in present:
            out.append(f"| {r['system']} | {fmt(r.get('kib_per_idle_subscription'), 1)} | {spread(r, 1)} | {fmt(r['front']['rss_mb'])} "
                       f"| {fmt(r['server']['rss_mb'])} | {fmt(r['server']['cpu_cores'], 2)} | {r.get('note', '')} |")
    else:
        out += ["| system | published/s | delivered/s | spread | delivered / expected | p50 ms | p90 ms | p99 ms | p99.9 ms | ack p50 ms | ack p99 ms | errors | server CPU | CPU ms / 1k publishes | server RSS MB | note |",
                "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in present:
            lat, ack = r["latency"], r["ack"]
            out.append(
                f"| {r['system']} | {fmt(r['publish_per_s'])} | {fmt(r['delivered_per_s'])} | {spread(r)} | {r['delivered']:,} / {r['expected']:,} "
                f"| {fmt(lat['p50_ms'], 2)} | {fmt(lat['p90_ms'], 2)} | {fmt(lat['p99_ms'], 2)} | {fmt(lat['p999_ms'], 2)} "
                f"| {fmt(ack['p50_ms'], 2)} | {fmt(ack['p99_ms'], 2)} | {r['errors']} | {fmt(r['server']['cpu_cores'], 2)} "
                f"| {fmt(r.get('server_cpu_ms_per_1k'), 0)} | {fmt(r['server']['rss_mb'])} | {r.get('note', '')} |")
        relay = get("relay", scenario)
        if relay and relay["delivered_per_s"]:
            ratios = [f"{r['system']} {r['delivered_per_s'] / relay['delivered_per_s']:.2f}x" for r in present
                      if r["system"] != "relay" and r["delivered_per_s"]]
            if ratios:
                out += ["", "Delivered/s relative to the relay: " + ", ".join(ratios) + "."]
    out.append("")

out += ["## Commands", "", "```sh", *commands, "```", "", "![throughput and latency per system](benchmarks.png)", ""]
open(md_path, "w").write("\n".join(out))

# Chart: delivered/s and p99 latency per scenario and system.
plotted = [s for s in SCENARIOS if s not in ("idle", "presence")]
fig, axes = plt.subplots(1, 3, figsize=(16, 5))
width = 0.8 / len(SYSTEMS)
for i, system in enumerate(SYSTEMS):
    xs = [j + (i - (len(SYSTEMS) - 1) / 2) * width for j in range(len(plotted))]
    axes[0].bar(xs, [(get(system, s) or {}).get("delivered_per_s", 0) for s in plotted], width, label=system)
    axes[1].bar(xs, [((get(system, s) or {}).get("latency") or {}).get("p99_ms", 0) for s in plotted], width, label=system)
idle = [get(s, "idle") for s in SYSTEMS]
axes[2].bar([r["system"] for r in idle if r], [r.get("kib_per_idle_subscription") or 0 for r in idle if r],
            color=[f"C{i}" for i in range(len([r for r in idle if r]))])
for ax, title in zip(axes[:2], ["delivered messages/s", "p99 latency, ms (log)"]):
    ax.set_xticks(range(len(plotted)))
    ax.set_xticklabels(plotted)
    ax.set_title(title)
axes[1].set_yscale("log")
axes[0].legend()
axes[2].set_title("KiB per idle subscription")
axes[2].tick_params(axis="x", rotation=20)
fig.suptitle(f"Relay vs Centrifugo vs raw NATS, one machine ({os.cpu_count()} cores)")
fig.tight_layout()
fig.savefig(png_path, dpi=100)
