"""The ingest bench's summary of its cases (the figures written to its JSON) and the tables
and lines it prints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_table", "summarize"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _worst(values: list[Any], pick: Callable[[list[Any]], Any] = min) -> Any:
    present = [v for v in values if v is not None]
    return pick(present) if present else None


def summarize(cases: list[dict[str, Any]], two_hubs: dict[str, Any] | None,
              rollup_ms: float | None) -> dict[str, Any]:
    def flood_of(batch: int, key: str) -> list[Any]:
        return [c["flood"][key] for c in cases if c["readings_per_message"] == batch]

    pg10 = [c["flood"] for c in cases
            if c["database"] == "postgresql" and c["readings_per_message"] == 10][:1]
    scaling = per_cpu_ratio = None
    if two_hubs and pg10:
        scaling = _ratio(two_hubs["flood"]["messages_per_s"], pg10[0]["messages_per_s"])
        # Each hub's work per CPU-second with two, against one alone: about 1 when the hubs
        # take nothing from each other, so that the factor is bounded only by the cores.
        per_cpu_ratio = _ratio(two_hubs["flood"]["messages_per_cpu_s"],
                               pg10[0]["messages_per_cpu_s"])
    # How busy the machine was with one hub and with two (PostgreSQL, batch 10): two hubs can
    # add only what one left idle of the machine's cores.
    busy = [f.get("machine_busy_cores") for f in pg10]
    overloads = [c["overload"] for c in cases if "overload" in c]  # each case's median run
    every_overload = [o for c in cases for o in _runs(c)]
    every = cases + ([two_hubs] if two_hubs else [])
    return {
        "one_hub_messages_per_s_batch10": _worst(flood_of(10, "messages_per_s")),
        "one_hub_readings_per_s_batch100": _worst(flood_of(100, "readings_per_s")),
        "one_hub_messages_per_cpu_s_batch10": _worst(flood_of(10, "messages_per_cpu_s")),
        "one_hub_readings_per_cpu_s_batch100": _worst(
            [m * 100 for m in flood_of(100, "messages_per_cpu_s") if m is not None]),
        "two_hub_scaling": scaling,
        "two_hub_per_cpu_s_ratio": per_cpu_ratio,
        "two_hub_machine_busy_cores": (busy + [two_hubs["flood"].get("machine_busy_cores")]
                                       if two_hubs and busy else None),
        "lost": sum(c["lost"] for c in every),
        "duplicates": sum(c["duplicates"] for c in every),
        # Not a defect by themselves (each was stored once): how often the broker delivered
        # again what a hub had stored, and how often a hub's commit failed and was retried.
        "hub_duplicates": sum(p.get("hub_duplicates", 0) for p in _phases(every)),
        "hub_commit_errors": sum(p.get("hub_commit_errors", 0) for p in _phases(every)),
        "hub_rss_bytes_max": _worst([c["flood"]["hub_rss_bytes_max"] for c in every]
                                    + [o["hub_rss_bytes_max"] for o in every_overload], max),
        # Of the median run of each database's overloads, the worse; every run's, in the
        # order they ran, beside it.
        "overload_stored_ratio": _worst([o.get("stored_ratio") for o in overloads]),
        "overload_stored_ratios": {c["database"]: [o.get("stored_ratio") for o in _runs(c)]
                                   for c in cases if "overload" in c},
        "overload_offered_ratio": _worst([o.get("offered_ratio") for o in overloads]),
        "overload_lost": sum(o.get("lost", 0) for o in overloads) if overloads else None,
        "overload_broker_drop_log_lines": (sum(o["broker_drop_log_lines"]
                                               for o in every_overload)
                                           if overloads else None),
        "broker_drop_log_lines": sum(c.get("broker_drop_log_lines", 0) for c in every),
        "broker_rss_bytes_max": _worst([c["flood"]["broker_rss_bytes_max"] for c in every]
                                       + [o["broker_rss_bytes_max"] for o in every_overload],
                                       max),
        "publisher_cpu_us_per_message_batch10": _worst(
            flood_of(10, "publisher_cpu_us_per_message"), max),
        "rollup_query_ms": rollup_ms,
        "ok": all(c["ok"] for c in every),
    }


def _runs(case: dict[str, Any]) -> list[dict[str, Any]]:
    """A case's overload runs in the order they ran."""
    runs = [case["overload"], *case.get("overload_other_runs", [])] if "overload" in case else []
    return sorted(runs, key=lambda o: o.get("run", 1))


def _phases(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured phases of the cases: each one's flood, paced runs and overload runs."""
    return [p for c in cases
            for p in [c["flood"], *c.get("saturation_steps", []), *_runs(c)] if p]


def print_table(console: Console, result: dict[str, Any]) -> None:
    """Two tables, so that no cell is cut to the terminal's width: what was stored, and where
    the machine's CPU and memory went meanwhile."""
    rows = list(result["cases"]) + ([result["two_hubs"]] if result["two_hubs"] else [])
    stored = Table(title=f"ingest, backlog held (load average {result['load_average_before']}"
                         f" -> {result['load_average_after']} on {result['cpu_count']} cores)")
    used = Table(title="meanwhile, on the machine")
    for table, columns in (
            (stored, ("database", "batch", "devices", "backlog held", "msg/s", "readings/s",
                      "msg per hub CPU-s", "broker drops", "lost", "dup", "ok")),
            (used, ("database", "batch", "hub CPU", "hub waited for CPU s/s", "publishers CPU",
                    "µs per msg published", "broker CPU", "database CPU",
                    "machine busy cores", "hub RSS MB", "broker RSS MB", "load"))):
        for col in columns:
            table.add_column(col, justify="right")
    for c in rows:
        f = c["flood"]
        name = c["database"] + (" x2 hubs" if c.get("hubs") == 2 else "")
        batch = str(c["readings_per_message"])
        stored.add_row(name, batch, str(c["devices"]), f"{f['held_backlog'] or 0:,}",
                       f"{f['messages_per_s']:,.0f}", f"{f['readings_per_s']:,.0f}",
                       f"{f['messages_per_cpu_s'] or 0:,.0f}",
                       str(c.get("broker_drop_log_lines", 0)), str(c["lost"]),
                       str(c["duplicates"]), "yes" if c["ok"] else "[bold red]NO[/]")
        used.add_row(name, batch, f"{f['hub_cpu_share'] * 100:.0f}%",
                     f"{f['hub_waited_for_cpu_s_per_s']:.2f}",
                     f"{f['publisher_cpu_share'] * 100:.0f}%",
                     str(f["publisher_cpu_us_per_message"]),
                     f"{f['broker_cpu_share'] * 100:.0f}%",
                     ("-" if f.get("database_cpu_share") is None
                      else f"{f['database_cpu_share'] * 100:.0f}%"),
                     f"{f.get('machine_busy_cores', 0):.2f}",
                     f"{f['hub_rss_bytes_max'] / 2**20:.0f}",
                     f"{f['broker_rss_bytes_max'] / 2**20:.0f}", str(f["load_average"]))
    console.print(stored)
    console.print(used)
    for c in result["cases"]:
        for step in c.get("saturation_steps", []):
            console.print(f"{c['database']}: paced {step['offered_rate']:,.0f} msg/s -> stored "
                          f"{step['messages_per_s']:,.0f}/s, backlog slope "
                          f"{step['backlog_slope_per_s']:+,.0f}/s: "
                          f"{'keeps up' if step['keeps_up'] else 'falls behind'} (load "
                          f"{step['load_average']}, speed probe {step.get('speed_probe_ms')} "
                          f"ms)")
        if "overload" in c:
            o, runs = c["overload"], _runs(c)
            if len(runs) > 1:
                console.print(f"{c['database']}: {len(runs)} overloads, in the order they ran: "
                              + "; ".join(f"stored ratio {r['stored_ratio']} (acknowledged "
                                          f"{r.get('offered_ratio')} x, per CPU-s against the "
                                          f"held flood {r['per_cpu_s_ratio']})" for r in runs)
                              + "; the median run:")
            console.print(f"{c['database']}: saturation {c['saturation_rate']:,.0f} msg/s; at "
                          f"2x for {result['overload_s']:g} s (acknowledged "
                          f"{o.get('offered_ratio')} x) stored {o['messages_per_s']:,.0f}"
                          f" msg/s (ratio {o['stored_ratio']}; per CPU-s, against the held "
                          f"flood: {o['per_cpu_s_ratio']}; against the saturation run: "
                          f"{o.get('against_saturation_run')}; hub CPU "
                          f"{o['hub_cpu_share'] * 100:.0f}%), backlog at the end "
                          f"{o['backlog_end']:,}, broker drop lines "
                          f"{o['broker_drop_log_lines']}, missing batches the hub shows "
                          f"{o['hub_missing_batches']}, hub peak RSS "
                          f"{o['hub_rss_bytes_max'] / 2**20:.0f} MB, broker peak RSS "
                          f"{o['broker_rss_bytes_max'] / 2**20:.0f} MB, lost after the load "
                          f"{o['lost']}, redeliveries the hub found stored "
                          f"{o.get('hub_duplicates')}, commits retried "
                          f"{o.get('hub_commit_errors')} (load {o['load_average']}, speed probe "
                          f"{o.get('speed_probe_ms')} ms, held flood's "
                          f"{c['flood'].get('speed_probe_ms')} ms)")
    for c in rows:
        for e in c.get("publisher_errors", []):
            console.print(f"[red]{c['database']} batch {c['readings_per_message']}: {e}[/]")
        logged = c.get("hub_log_warnings") or {}
        if logged.get("count"):
            console.print(f"{c['database']} batch {c['readings_per_message']}: "
                          f"{logged['count']} WARNING/ERROR lines in the hub's log; the last:")
            for line in logged["last"][-5:]:
                console.print(f"  {line}", markup=False)
    summary = {k: result[k] for k in (
        "one_hub_messages_per_s_batch10", "one_hub_readings_per_s_batch100",
        "one_hub_messages_per_cpu_s_batch10", "one_hub_readings_per_cpu_s_batch100",
        "two_hub_scaling", "two_hub_per_cpu_s_ratio", "two_hub_machine_busy_cores", "lost",
        "duplicates", "hub_duplicates", "hub_commit_errors", "broker_drop_log_lines",
        "hub_rss_bytes_max", "broker_rss_bytes_max", "publisher_cpu_us_per_message_batch10",
        "overload_stored_ratio", "overload_stored_ratios", "overload_offered_ratio",
        "overload_lost", "rollup_query_ms", "ok")}
    console.print(summary)
