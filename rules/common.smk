# Shared by all rules: the validated config, the results layout (every path, from
# dmflow.core.layout), the config sections as JSON params, the `dmflow` command.
import json
import os
import sys
import warnings

from snakemake.settings.types import DeploymentMethod

from dmflow.config import ConfigError, read_config_file, validate_config
from dmflow.core.layout import Layout, alpha_dir, block_ids, chunk_ids, train_runtime_minutes
from dmflow.core.schema import param_section
from dmflow.core.errors import DataWarning
from dmflow.data.sizing import dataset_sizes
from dmflow.core.budgets import CURVE_TARGETS_PER_PASS, PROCESS_MB, fit_bytes, moments_bytes
from dmflow.store.formats import STORE_NAMES, measured_seconds_per_model, moment_file_names

# Snakemake has read the config files already (a YTE template's code has run, an alias bomb is in
# memory as shared objects); each is read again here as plain data, so that what dmflow
# check-config refuses in a file (a template, an alias bomb, Python tags) stops the run too.
try:
    for _configfile in workflow.configfiles:
        read_config_file(_configfile)
    with warnings.catch_warnings(record=True) as _caught:
        warnings.simplefilter("always", DataWarning)
        _validated = validate_config(config)
except ConfigError as exc:
    sys.exit(f"dmflow: config error: {exc}")
for _warning in _caught:
    if issubclass(_warning.category, DataWarning):
        print(f"dmflow: warning: {_warning.message}", file=sys.stderr)
config.clear()
config.update(_validated)

L = Layout(config["results"])
SEED = config["seed"]
ALPHAS = [alpha_dir(a) for a in config["masks"]["alphas"]]
NUM_TRAIN, NUM_TARGETS = dataset_sizes(config["dataset"], config["seed"])
CONDA_ENV = "../envs/dmflow.yaml"
BASELINES = config["baselines"]["methods"] if config["baselines"]["enabled"] else []
# `dmflow --kernels` of the jobs that choose CPU-specific kernels (moments, learning curve, training)
KERNELS = ",".join(f"{kind}={value}" for kind, value in sorted(config["kernels"].items()))

# The rules run `dmflow <stage>`, the command of the active environment (the README's
# venv). With --sdm conda the jobs run in envs/dmflow.yaml, which holds dmflow's
# dependencies but not dmflow itself: there `dmflow` is a shell function that runs this
# checkout's src/.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    shell.prefix(
        "set -euo pipefail; dmflow() { "
        f'PYTHONPATH="{workflow.basedir}/src${{PYTHONPATH:+:$PYTHONPATH}}" python -m dmflow "$@"; }}; '
    )


def section_json(name):
    """A config section as compact, key-sorted JSON (a rule param and CLI argument), without the
    keys that never change a result (schema: x-result: false), so changing those re-runs nothing,
    nor keys added later while at their default (x-omit-default), so older results stand."""
    section = param_section(name, config[name])
    return json.dumps(section, sort_keys=True, separators=(",", ":"))


def chunk_size(split):
    return config["masks"]["eval_chunk_size" if split == "eval" else "chunk_size"]


def replicates(split):
    if split == "counterfactual":
        return config["counterfactual"]["replicates"]
    return config["masks"]["eval_replicates"] if split == "eval" else 1


def chunk_models(split):
    """Models one training job of a split trains (counterfactual: at most, by the case count of its design)."""
    if split == "counterfactual":
        cf = config["counterfactual"]
        rows = 1 + 2 * len(cf["ks"]) * min(cf["num_targets"], NUM_TARGETS)
    else:
        rows = chunk_size(split)
    return rows * replicates(split)


# Seconds per trained model, for the training jobs' time limits: configured, else measured in this
# results folder (the slowest trained chunk), else the schema's conservative estimate.
SECONDS_PER_MODEL = (
    config["train"]["seconds_per_model"]
    or measured_seconds_per_model(L)
    or config["train"]["unmeasured_seconds_per_model"]
)


def train_runtime(wildcards, attempt):
    """A training job's time limit in minutes (dmflow.core.layout.train_runtime_minutes)."""
    models = chunk_models(wildcards.split)
    return train_runtime_minutes(models, SECONDS_PER_MODEL, margin=config["train"]["runtime_margin"], attempt=attempt)


def gpus(device):
    """GPUs a job of a `device: auto | cpu | cuda` key asks for: one with cuda, one with auto where the
    config says the jobs run on GPU nodes (train.request_gpu), else none."""
    return int(device == "cuda" or (device == "auto" and config["train"]["request_gpu"]))


def chunk_files(kind, wildcards):
    """All mask ('masks') or trained ('train') chunk files of one alpha and split."""
    path = L.masks if kind == "masks" else L.trained
    ids = chunk_ids(config["masks"][f"{wildcards.split}_models"], chunk_size(wildcards.split))
    return [path(wildcards.alpha, wildcards.split, c) for c in ids]


def store_files(alpha, split):
    return [L.store_array(alpha, split, name) for name in STORE_NAMES]


def moments_files(alpha):
    return [L.moments_array(alpha, name) for name in moment_file_names()]


def moments_mem_mb():
    """Memory of the moments job (dmflow.core.budgets.moments_bytes), plus the interpreter's."""
    return int(PROCESS_MB + moments_bytes(NUM_TRAIN, NUM_TARGETS) / 2**20)


def fit_mem_mb(targets=None):
    """Memory of one fit job (dmflow.core.budgets.fit_bytes), plus the interpreter's."""
    t = min(targets or config["fit"]["targets_per_job"], NUM_TARGETS)
    fit = config["fit"]
    return int(PROCESS_MB + fit_bytes(NUM_TRAIN, t, threads=fit["threads"], device=fit["device"]) / 2**20)


def benchmarked_mem_mb():
    """The mem_mb (first attempt) that each benchmarked job asks for, as `RULE=MB` words for summary.md."""
    asked = {
        "train_chunk": config["train"]["mem_mb"],
        "moments": moments_mem_mb(),
        "fit_block": fit_mem_mb(),
        "baseline_scores": config["train"]["mem_mb"],
    }
    return " ".join(f"{rule}={mb}" for rule, mb in asked.items())


def image_shape_arg():
    """The --image-shape option of the analysis commands (empty when not set)."""
    shape = config["dataset"]["image_shape"]
    return "--image-shape " + " ".join(str(s) for s in shape) if shape else ""


def summary_inputs():
    """The files summary.md reads: per alpha, evaluation, curve, counterfactual, analyses."""
    out = []
    for alpha in ALPHAS:
        out += [L.influencers_table(alpha), L.leakage_table(alpha), L.embeddings_table(alpha)]
    return final_outputs(summary=False) + out


def final_outputs(summary=True):
    """Everything the target rule asks for, per alpha. The stores, moments and fit blocks are
    targets too. Snakemake deletes a failed job's outputs, and without them here one lost that
    way would go unnoticed ("Nothing to be done") while the files after it still exist."""
    out = [L.summary()] if summary else []
    blocks = block_ids(NUM_TARGETS, config["fit"]["targets_per_job"])
    for alpha in ALPHAS:
        out += [L.manifest(alpha, "fit"), L.manifest(alpha, "eval"), L.moments_manifest(alpha)]
        out += [L.fit_block(alpha, b) for b in blocks]
        out += [L.datamodels(alpha), L.eval_summary(alpha)]
        if config["evaluate"]["learning_curve"]:
            out.append(L.curve_table(alpha))
        if config["counterfactual"]["enabled"]:
            out.append(L.cf_summary(alpha))
        if BASELINES:
            out.append(L.compare_table(alpha))
    return out
