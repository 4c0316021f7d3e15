rule export:
    input:
        samples=rules.sample.output.samples,
        generator=rules.train.output.generator,
        real_images=extracted(["train"], anno=False),
        real_annos=extracted(["train"], images=False),
    output:
        h5=export_outputs()["h5"],
        card=export_outputs()["card"],
        preview=report(
            export_outputs()["preview"],
            caption="../report/preview.rst",
            category="2. Synthetic dataset",
        ),
    log:
        layout.stage_log("export"),
    benchmark:
        layout.benchmark("export")
    conda:
        "../../envs/cardigan.yaml"
    threads: 2
    params:
        # export.formats and export.nnunet are rule nnunet's: adding nnunet re-runs that alone
        provenance=provenance_config(),
        code=code("export"),
    script:
        "../scripts/export.py"


# Its own rule: a change of the nnU-Net writer or settings re-runs this alone, not evaluate.
rule nnunet:
    input:
        h5=rules.export.output.h5,
        test_images=export_test_split(anno=False),
        test_annos=export_test_split(images=False),
    output:
        folder=directory(layout.nnunet_dir(config["export"])),
        datalist=layout.datalist_file(),
    log:
        layout.stage_log("nnunet"),
    benchmark:
        layout.benchmark("nnunet")
    conda:
        "../../envs/cardigan.yaml"
    params:
        nnunet=config["export"]["nnunet"],
        code=code("nnunet"),
    script:
        "../scripts/nnunet.py"
