"""Parallel folds on Ray (``resources.parallel_folds``): a trial's folds run as separate tasks, and
:class:`FoldGroup` merges their reports and results back into one trial's."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from trials import EpochReport, FoldResult, TrialResult

from ._events import Finished

__all__ = ["FoldGroup"]


@dataclass
class FoldGroup:
    """A trial whose folds run as separate tasks (``parallel_folds``), merged back into one."""

    parts: list[str]
    reports: dict[str, list[EpochReport]] = field(default_factory=dict)
    results: dict[str, TrialResult] = field(default_factory=dict)
    finished: dict[str, Finished] = field(default_factory=dict)
    emitted: int = 0

    def add_report(self, part: str, r: EpochReport) -> list[EpochReport]:
        rs = self.reports.setdefault(part, [])
        if r.epoch <= len(rs):  # Ray re-executed this fold (its node died): it repeats epochs; keep the first
            return []
        rs.append(r)
        return self._ready()

    def add_result(self, part: str, ev: Finished) -> list[EpochReport]:
        assert isinstance(ev.result, TrialResult)
        self.results[part] = ev.result
        self.finished[part] = ev
        return self._ready()

    def _ready(self) -> list[EpochReport]:
        out = []
        while True:
            epoch = self.emitted + 1
            members = []
            for p in self.parts:
                rs = self.reports.get(p, [])
                if len(rs) >= epoch:
                    members.extend(rs[epoch - 1].members)
                elif p in self.results and rs:  # this fold has ended: its last state, stopped
                    members.extend(replace(m, stopped=True) for m in rs[-1].members)
                else:
                    return out
            if all(p in self.results and len(self.reports.get(p, [])) < epoch for p in self.parts):
                return out
            out.append(EpochReport(epoch=epoch, members=tuple(members)))
            self.emitted = epoch

    def merged(self) -> TrialResult | None:
        if len(self.results) < len(self.parts):
            return None
        rs = [self.results[p] for p in self.parts]
        folds: list[FoldResult] = [f for r in rs for f in r.folds]
        curves = {m: [c for r in rs for c in r.curves.get(m, [])] for m in rs[0].curves}
        return TrialResult(
            folds=tuple(folds),
            curves=curves,
            epochs_run=max(r.epochs_run for r in rs),
            duration_s=max(r.duration_s for r in rs),
            device=rs[0].device,
            train_path=rs[0].train_path,
            stopped_by_report=any(r.stopped_by_report for r in rs),
            resumed_from_epoch=min((r.resumed_from_epoch for r in rs if r.resumed_from_epoch is not None),
                                   default=None),
            messages=tuple(m for r in rs for m in r.messages),
        )

    def finished_event(self, key: str) -> Finished | None:
        """The merged trial; ``node``/``node_id`` list the distinct nodes of its folds, in fold order."""
        merged = self.merged()
        if merged is None:
            return None
        evs = [self.finished[p] for p in self.parts]

        def distinct(values: list[str]) -> str:
            return ",".join(dict.fromkeys(v for v in values if v))

        return Finished(
            key,
            merged,
            node=distinct([e.node for e in evs]),
            node_id=distinct([e.node_id for e in evs]),
            started_at=min(e.started_at for e in evs),
            finished_at=max(e.finished_at for e in evs),
        )
