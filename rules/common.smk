# Helpers shared by all rules: validated config, path builders, JSON params.
import json
import sys

from snakemake.settings.types import DeploymentMethod

from dmflow.config import ConfigError, validate_config
from dmflow.data import dataset_sizes

try:
    _validated = validate_config(config)
except ConfigError as exc:
    sys.exit(f"dmflow: config error: {exc}")
config.clear()
config.update(_validated)

RESULTS = config["results"].rstrip("/")
SEED = config["seed"]
ALPHAS = [str(a) for a in config["masks"]["alphas"]]
NUM_TRAIN, NUM_TARGETS = dataset_sizes(config["dataset"], config["seed"])
# With --sdm conda the jobs run in envs/dmflow.yaml, which holds dmflow's dependencies
# but not dmflow itself: they run it from this checkout's src/. Otherwise the `dmflow`
# command of the active environment (the venv of the README) runs every stage.
CONDA_ENV = "../envs/dmflow.yaml"
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    DMFLOW = f"PYTHONPATH={workflow.basedir}/src${{PYTHONPATH:+:$PYTHONPATH}} python -m dmflow"
else:
    DMFLOW = "dmflow"

wildcard_constraints:
    alpha=r"[0-9.]+",
    split=r"fit|eval|counterfactual",
    chunk=r"\d+",
    block=r"\d+",


# Keys that never change a stage's result: left out of the params, so changing them
# (or adding such keys in a new dmflow version) re-runs nothing.
NOT_RESULTS = {"dataset": ("image_shape",), "train": ("threads", "mem_mb", "max_diverged_fraction"), "fit": ("threads",)}


def section_json(name):
    """A config section as compact, key-sorted JSON (a rule param and CLI argument)."""
    section = {k: v for k, v in config[name].items() if k not in NOT_RESULTS.get(name, ())}
    return json.dumps(section, sort_keys=True, separators=(",", ":"))


def chunk_size(split):
    return config["masks"]["eval_chunk_size" if split == "eval" else "chunk_size"]


def num_chunks(split):
    return config["masks"][f"{split}_models"] // chunk_size(split)


def chunk_ids(split):
    return [f"{i:05d}" for i in range(num_chunks(split))]


def replicates(split):
    if split == "counterfactual":
        return config["counterfactual"]["replicates"]
    return config["masks"]["eval_replicates"] if split == "eval" else 1


def chunk_files(kind, wildcards):
    """All mask ('masks') or trained ('train') chunk files of one alpha and split."""
    ext = "npy" if kind == "masks" else "npz"
    return [
        f"{RESULTS}/{kind}/{wildcards.alpha}/{wildcards.split}/{c}.{ext}"
        for c in chunk_ids(wildcards.split)
    ]


def num_blocks():
    per_job = config["fit"]["targets_per_job"]
    return -(-NUM_TARGETS // per_job)


def block_ids():
    return [f"{b:04d}" for b in range(num_blocks())]


def store_files(alpha, split):
    names = ["masks", "margins", "status", "seeds", "acc_target", "acc_subset"]
    return [f"{RESULTS}/store/{alpha}/{split}/{name}.npy" for name in names]


def fit_mem_mb(all_targets=False):
    """Memory of one fit job: float64 moments (n x n, n x targets) plus solver copies."""
    n = NUM_TRAIN
    t = NUM_TARGETS if all_targets else min(config["fit"]["targets_per_job"], NUM_TARGETS)
    floats = 3 * n * n + 8 * n * t + 4096 * (n + t)
    return int(500 + floats * 8 / 2**20)


def image_shape_arg():
    """The --image-shape option of the analysis commands (empty when not set)."""
    shape = config["dataset"]["image_shape"]
    return "--image-shape " + " ".join(str(s) for s in shape) if shape else ""


def summary_inputs():
    """The files summary.md reads: per alpha, evaluation, curve, counterfactual, analyses."""
    out = []
    for alpha in ALPHAS:
        out.append(f"{RESULTS}/analysis/{alpha}/influencers.parquet")
        out.append(f"{RESULTS}/analysis/{alpha}/leakage.csv")
        out.append(f"{RESULTS}/analysis/{alpha}/embeddings.csv")
    return final_outputs(summary=False) + out


def final_outputs(summary=True):
    """Everything `rule all` asks for, per alpha."""
    out = [f"{RESULTS}/summary.md"] if summary else []
    for alpha in ALPHAS:
        out.append(f"{RESULTS}/datamodels/{alpha}.npz")
        out.append(f"{RESULTS}/evaluation/{alpha}/summary.json")
        if config["evaluate"]["learning_curve"]:
            out.append(f"{RESULTS}/evaluation/{alpha}/learning_curve.csv")
        if config["counterfactual"]["enabled"]:
            out.append(f"{RESULTS}/counterfactual/{alpha}/summary.json")
    return out
