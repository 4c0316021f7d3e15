rule export:
    input:
        samples="results/sample/samples.h5",
        generator="results/train/generator.pt",
        real_images=extracted(["train"], anno=False),
        real_annos=extracted(["train"], images=False),
        test_images=export_test_split(anno=False),
        test_annos=export_test_split(images=False),
    output:
        **{
            k: (directory(v) if k == "nnunet" else v)
            for k, v in export_outputs().items()
            if k not in ("preview",)
        },
        preview=report(
            export_outputs()["preview"],
            caption="../report/preview.rst",
            category="2. Synthetic dataset",
        ),
    log:
        "results/logs/export.log",
    benchmark:
        "results/benchmarks/export.tsv"
    conda:
        "../../envs/cardigan.yaml"
    threads: 2
    params:
        export=config["export"],
        provenance=provenance_config(),
    script:
        "../scripts/export.py"
