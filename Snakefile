# dmflow: datamodels as a Snakemake workflow. See README.md and docs/.
from snakemake.utils import min_version

from dmflow.attribution import BASELINE_METHODS
from dmflow.core.seeds import SPLITS

min_version("9.0")


report: "report/workflow.rst"


# config.yaml is the default, not a base: with --configfile it is not read at all, so a
# user's file means exactly what `dmflow check-config` says (omitted keys: schema defaults).
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    alpha=r"[0-9.]+",
    split="|".join(SPLITS),
    chunk=r"\d+",
    block=r"\d+",
    method="|".join(BASELINE_METHODS),


include: "rules/data.smk"
include: "rules/masks.smk"
include: "rules/train.smk"
include: "rules/collect.smk"
include: "rules/moments.smk"
include: "rules/fit.smk"
include: "rules/evaluate.smk"
include: "rules/counterfactual.smk"
include: "rules/analysis.smk"
include: "rules/baselines.smk"


# Jobs of a second or two run in the Snakemake process itself, not as cluster jobs (one make_masks per
# training chunk would otherwise be hundreds of sbatch jobs that wait longer in the queue than they run).
localrules:
    make_masks,
    merge_fit,
    compare_methods,
    counterfactual_analyse,
    summary,


rule all:
    default_target: True
    input:
        final_outputs(),
