"""The import graph drawn for docs/architecture.md: every subpackage and top-level module
once, inside its layer's box, and every edge between two drawn nodes."""

import re

from image_finetune import codemap


def test_the_dot_graph_draws_each_package_once_in_its_layer():
    text = codemap.dot_graph()
    clusters = re.findall(r'subgraph "cluster_(\w+)" \{(.*?)\n  \}', text, re.S)
    assert [name for name, _ in clusters] == sorted(
        codemap.LAYERS, key=codemap.LAYERS.get, reverse=True
    )
    drawn = {
        node: layer
        for layer, body in clusters
        for node in re.findall(r'"([\w.]+)" \[fillcolor', body)
    }
    modules = [m for m in codemap.import_graph() if m != codemap.PACKAGE]
    assert set(drawn) == {codemap.package_of(m) for m in modules}
    assert all(drawn[codemap.package_of(m)] == codemap.layer_of(m) for m in modules)
    for source, target in re.findall(r'"([\w.]+)" -> "([\w.]+)";', text):
        assert source in drawn and target in drawn and source != target


def test_packages_are_named_by_their_first_part():
    assert codemap.package_of("image_finetune.serving.app") == "serving"
    assert codemap.package_of("image_finetune.cli") == "cli"
    assert codemap.layer_of("image_finetune.registry.promotion") == "services"
    assert codemap.layer_of("image_finetune") == "adapters"
