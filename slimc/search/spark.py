"""Trials on many machines: Hyperopt's SparkTrials on a Spark master ('local[2]', 'spark://host:7077').

Needs pyspark (`pip install 'slimc[distributed]'`) and a Java runtime. Each trial is a
self-contained task (model spec, pipeline text, eval spec, the text of the .py files they name),
so workers need the slimc package and nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from ..errors import SlimcError, first_line

__all__ = ["spark_available", "spark_trials"]


def _java_ok() -> tuple[bool, str]:
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not os.path.exists(java):
        return False, "no Java runtime (java is not on PATH and JAVA_HOME is not set)"
    try:
        subprocess.run([java, "-version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"'{java} -version' failed: {exc}"
    return True, ""


def spark_available() -> tuple[bool, str]:
    """(usable, why not): pyspark importable and a Java runtime present."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False, "pyspark is not installed (pip install 'slimc[distributed]')"
    return _java_ok()


def _local_slots(master: str) -> int | None:
    m = re.fullmatch(r"local\[(\d+|\*)\]", master.strip())
    if m:
        return (os.cpu_count() or 1) if m.group(1) == "*" else int(m.group(1))
    return 1 if master.strip() == "local" else None


def spark_trials(master: str, parallelism: int | None = None):
    """A SparkTrials bound to a session on `master`. Local masters run workers with this Python."""
    ok, why = spark_available()
    if not ok:
        raise SlimcError(f"--spark {master}: {why}. Install pyspark with pip install 'slimc[distributed]' and a "
                         "Java runtime (e.g. apt-get install default-jre-headless).")
    if master.startswith("local"):
        # Workers must import slimc: run them with the interpreter that runs the search.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    import warnings

    from hyperopt import SparkTrials
    from pyspark.sql import SparkSession

    # pyspark warns once per trial thread that tags are not inherited; slimc sets none.
    warnings.filterwarnings("ignore", message="Spark session is not provided")

    try:
        session = (SparkSession.builder.master(master).appName("slimc-search")
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.python.worker.reuse", "true")
                   .getOrCreate())
    except Exception as exc:
        first = first_line(exc)
        raise SlimcError(f"cannot start a Spark session on '{master}': {first}") from None
    session.sparkContext.setLogLevel("ERROR")
    slots = parallelism or _local_slots(master) or session.sparkContext.defaultParallelism
    return SparkTrials(parallelism=max(1, int(slots)), spark_session=session)
