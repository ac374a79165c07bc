"""edgevision: offline custom vision for edge devices — train compact classifiers, evaluate, export, run.

Public API (mirrors the CLI)::

    from edgevision import Project
    project = Project.create("flowers", type="multiclass", domain="general-compact")
    project.import_folder("photos/")            # photos/<tag>/<image>
    iteration = project.train(mode="quick")
    print(iteration.evaluate(threshold=0.5).to_dict())
    print(iteration.predict("rose.jpg")[0].to_dict())

TensorFlow is imported only when a model is built, trained or loaded.
"""

from edgevision.errors import EdgevisionError
from edgevision.store.project import ImageRecord, ImportReport, Project, Tag

__version__ = "0.1.0"

__all__ = ["EdgevisionError", "ImageRecord", "ImportReport", "Project", "Tag", "__version__", "list_domains", "get_domain"]


def __getattr__(name: str):  # lazy re-exports keep `import edgevision` light
    if name in ("list_domains", "get_domain"):
        from edgevision import domains

        return getattr(domains, name)
    if name == "Iteration":
        from edgevision.iteration import Iteration

        return Iteration
    raise AttributeError(name)
