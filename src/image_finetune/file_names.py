"""The names of the files that domain modules below the steps read and write themselves:
one definition each, re-exported by ``steps.layout`` (the steps' one home of file names).
Kept in this tiny module so that a stage naming a file does not depend on the code that
reads it."""

DATA_MANIFEST = "manifest.json"  # a canonical dataset's manifest (data.canonical)
MODEL_FILE = "model.keras"  # a saved classifier (inference.load_classifier)
ENGINE_MANIFEST = "engine.json"  # an exported engine's manifest (engines.read_manifest)
# An evaluation's HTML report and the pictures it embeds (report.write_html)
REPORT_HTML = "report.html"
CONFUSION_PNG = "confusion_matrix.png"
GALLERY_PNG = "misclassified.png"
