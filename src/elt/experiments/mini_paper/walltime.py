"""Wall-time estimates from the measured commands: the ``.done`` markers' seconds, scheduled as the
runner schedules them (``startable``)."""
from __future__ import annotations

from elt.experiments.runner import Task, startable


def measured_times(tasks: list[Task]) -> dict:
    """Wall seconds of every finished command of ``tasks``, read from its ``.done`` marker."""
    out = {}
    for t in tasks:
        if t.is_done():
            try:
                out[t.name] = float(t.done.read_text().split()[0])
            except (ValueError, IndexError):
                pass
    return out


def simulated_wall(tasks: list[Task], seconds: dict[str, float], jobs: int) -> float:
    """The wall time of ``tasks`` under ``run_tasks``' rule (``startable``) with these durations."""
    todo, finished, running, now = {t.name: t for t in tasks}, set(), {}, 0.0  # running: name -> end time
    while todo or running:
        for t in startable(todo, finished, jobs - len(running)):
            running[t.name] = now + seconds[t.name]
            del todo[t.name]
        if not running:
            break  # unreachable dependencies: nothing left can start
        name = min(running, key=running.get)
        now = running.pop(name)
        finished.add(name)
    return now


def fallbacks(name: str) -> list[str]:
    """Where an unmeasured command's time comes from, in order: its arm's other seeds, then its kind."""
    kind = name.split("_")[0]
    return [name.rsplit("_s", 1)[0] + "_", kind + "_"] if kind in ("train", "eval") else [kind]


def budget_line(timings: dict, tasks: list[Task], mode: str, jobs: int = 2) -> str:
    """The wall time of a mode's ``tasks`` estimated from the measured commands, scheduled as ``run_tasks``
    would; an unmeasured command counts as the mean of the measured ones it resembles (``fallbacks``)."""
    def mean_of(prefix):
        v = [s for k, s in timings.items() if k.startswith(prefix)]
        return sum(v) / len(v) if v else None

    seconds, guessed, unknown = {}, [], []
    for t in tasks:
        m = timings.get(t.name)
        if m is None:
            m = next((v for v in map(mean_of, fallbacks(t.name)) if v is not None), None)
            (guessed if m is not None else unknown).append(t.name)
        seconds[t.name] = m or 0.0
    named = f": {', '.join(guessed)}" if len(guessed) <= 4 else ""  # many (a full run from a quick one's times): the count only
    note = f"; {len(guessed)} unmeasured, counted as the mean of the measured ones they resemble{named}" if guessed else ""
    note += f"; unmeasured and counted as 0 s: {', '.join(unknown)}" if unknown else ""
    return (f"{mode} estimate from these times: {sum(seconds.values()) / 60:.0f} CPU-minutes of commands, about "
            f"{simulated_wall(tasks, seconds, jobs) / 60:.0f} min wall at {jobs} parallel jobs (scheduled as "
            f"`run` schedules them{note}).")
