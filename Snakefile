# cardiGAN: CAMUS -> SPADE GAN -> synthetic image/mask segmentation dataset.
# Stages: phantom (default source) -> extract -> train -> sample -> export -> evaluate
# (-> label_budget, when configured) -> manifest.
from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/phantom.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/label_budget.smk"
include: "workflow/rules/manifest.smk"


rule all:
    default_target: True
    input:
        rules.manifest.output,
