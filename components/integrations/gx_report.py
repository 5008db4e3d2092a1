"""Great Expectations as sortflow runs it: an ephemeral context whose Data Docs go to a folder of ours, tables
validated whole, and each result read back as a plain dict. Used by check-dataset and the monitor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

SITE = "sortflow"


def gx_context(docs_dir: Path) -> Any:
    """An ephemeral GX context whose Data Docs site is `docs_dir` (not a random temporary folder)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    context.add_data_docs_site(
        site_name=SITE,
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        },
    )
    return context


def validate(
    context: Any, table: str, frame: pd.DataFrame, expectations: list[Any], index_columns: list[str]
) -> tuple[Any, list[dict[str, Any]]]:
    """Validate one table with its expectations; the suite and the validation results (JSON dicts).

    Offending rows are named by `index_columns` (for example the list file and line).
    """
    import great_expectations as gx

    source = context.data_sources.add_pandas(f"{table}_source")
    batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
    suite = context.suites.add(gx.ExpectationSuite(name=f"sortflow_{table}"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"check_{table}",
            validation_definitions=[definition],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_columns},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    return suite, [validation.to_json_dict() for validation in run.run_results.values()]


def build_docs(context: Any) -> None:
    """One Data Docs build for every table (an UpdateDataDocsAction per checkpoint would build it per table)."""
    context.build_data_docs(site_names=[SITE])
