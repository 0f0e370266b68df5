"""Run the patched loader (native/carvq-load, sanitizer build) over files and mutated files.

carvq-load reads paths from stdin and answers each with OK or REJECTED plus the message; when it
dies on a file (abort, signal, sanitizer report) that file is recorded as a crash, kept for
reproduction, and the program is restarted on the files after it. Many files per process keep a
run of thousands of cases within minutes.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..gguf import fuzz as mutator
from ..runtime import native


@dataclass
class Outcome:
    path: Path
    status: str          # "ok", "rejected" or "crash"
    message: str = ""    # the rejection message, or for a crash the cause and the end of stderr


@dataclass
class Summary:
    cases: int = 0
    ok: int = 0
    rejected: int = 0
    rejected_without_message: int = 0
    sanitizer_reports: int = 0
    aborts: int = 0
    other_crashes: int = 0
    crashes: list[Outcome] = field(default_factory=list)
    messages: dict[str, int] = field(default_factory=dict)  # rejection message -> count

    def add(self, outcome: Outcome) -> None:
        self.cases += 1
        if outcome.status == "ok":
            self.ok += 1
        elif outcome.status == "rejected":
            self.rejected += 1
            if not outcome.message or outcome.message == "(no message)":
                self.rejected_without_message += 1
            key = _message_key(outcome.message)
            self.messages[key] = self.messages.get(key, 0) + 1
        else:
            self.crashes.append(outcome)
            if outcome.message.startswith("sanitizer"):
                self.sanitizer_reports += 1
            elif outcome.message.startswith("abort"):
                self.aborts += 1
            else:
                self.other_crashes += 1

    @property
    def n_crashes(self) -> int:
        return self.sanitizer_reports + self.aborts + self.other_crashes


def _message_key(message: str) -> str:
    """The start of a rejection's first error, without the logging function's name and with
    digits masked, to count kinds of rejection."""
    text = re.sub(r"^\w+: (error loading model: )?", "", message)
    return re.sub(r"\d", "#", text)[:100]


def _crash_cause(rc: int, stderr: str) -> str:
    if rc in (native.ASAN_EXIT, native.UBSAN_EXIT) or "Sanitizer" in stderr or "runtime error:" in stderr:
        return "sanitizer report"
    if rc == -signal.SIGABRT or rc == 134:
        return "abort (SIGABRT)"
    if rc < 0:
        return f"signal {signal.Signals(-rc).name}"
    return f"exit {rc} before answering"


def run_files(program: Path, paths: list[Path], args: tuple[str, ...] = (), timeout: float = 600.0) -> list[Outcome]:
    """Outcome of loading each path, in order (args: carvq-load options such as --mtp); restarts
    the program after a crash."""
    outcomes: list[Outcome] = []
    todo = list(paths)
    env = native.sanitizer_env()
    while todo:
        proc = subprocess.run([str(program), *args, "-"], input="".join(f"{p}\n" for p in todo), capture_output=True,
                              text=True, errors="replace", env=env, timeout=timeout)
        current: Path | None = None
        answered = 0
        for line in proc.stdout.splitlines():
            if line.startswith("BEGIN "):
                current = Path(line[6:])
            elif line.startswith("OK "):
                outcomes.append(Outcome(Path(line[3:]), "ok"))
                answered += 1
                current = None
            elif line.startswith("REJECTED "):
                path, _, message = line[9:].partition("\t")
                outcomes.append(Outcome(Path(path), "rejected", message))
                answered += 1
                current = None
        todo = todo[answered:]
        if not todo:
            break
        # the process died: on the file it had begun, or (if it died between files) the next one
        crashed = current if current is not None else todo[0]
        cause = _crash_cause(proc.returncode, proc.stderr)
        outcomes.append(Outcome(crashed, "crash", f"{cause}\n{proc.stderr[-4000:]}"))
        todo = todo[1:]
    return outcomes


def fuzz(program: Path, corpus: list[Path], n_cases: int, seed: int = 0, batch: int = 200,
         keep_crashes: Path | None = None, progress=None) -> Summary:
    """Load n_cases mutants of the corpus files (round-robin, mutant i from seed + i)."""
    parsed = mutator.load_corpus(corpus)
    summary = Summary()
    with tempfile.TemporaryDirectory(prefix="carvq-fuzz-") as tmp:
        for start in range(0, n_cases, batch):
            files, what = [], {}
            for i in range(start, min(start + batch, n_cases)):
                src, tree, raw = parsed[i % len(parsed)]
                buf, desc = mutator.mutant(tree, raw, seed + i)
                path = Path(tmp) / f"case-{seed + i}-{src.stem}.gguf"
                path.write_bytes(buf)
                files.append(path)
                what[path] = desc
            for outcome in run_files(program, files):
                summary.add(outcome)
                if outcome.status == "crash":
                    outcome.message = f"{what.get(outcome.path, '')}\n{outcome.message}"
                    if keep_crashes is not None:
                        keep_crashes.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(outcome.path, keep_crashes / outcome.path.name)
            for path in files:
                path.unlink(missing_ok=True)
            if progress is not None:
                progress(summary)
    return summary
