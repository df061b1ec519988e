"""One distribution, three import names: autolrs, autolrs.server (server/), autolrs.callbacks (callbacks/)."""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
# The one place the version is written is autolrs/__init__.py; read, not imported (importing
# would need the requirements at build time).
VERSION = re.search(r'^__version__ = "([^"]+)"$', (HERE / "autolrs" / "__init__.py").read_text(encoding="utf-8"),
                    re.MULTILINE).group(1)
# Placeholders until the project has a public home: replace this one address (README: Releases).
HOME = "https://example.org/autolrs"

PLOT = ["matplotlib", "tqdm"]
TRANSFORMERS = ["transformers", "accelerate"]  # Trainer needs accelerate
LINT = ["ruff", "mypy", "types-PyYAML"]  # bash run.sh lint
RELEASE = ["build", "twine", "setuptools>=77"]  # bash run.sh package (builds without isolation)

setup(
    name="autolrs",
    version=VERSION,
    description="Learning-rate tuning as a service for PyTorch: a tuner server and a thin training-loop callback",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license_expression="Apache-2.0",
    license_files=["LICENSE"],
    url=HOME,
    project_urls={
        "Documentation": f"{HOME}/docs",
        "Source": f"{HOME}/source",
        "Issues": f"{HOME}/issues",
        "Changelog": f"{HOME}/changelog",
    },
    keywords=["learning rate", "hyperparameter tuning", "pytorch", "bayesian optimization", "lr finder"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Typing :: Typed",
    ],
    python_requires=">=3.10",
    # Listed explicitly: a find_packages() at the root would also install bare
    # `server`, `callbacks`, `tests` and `examples` packages.
    packages=["autolrs", "autolrs.wire", "autolrs.testing", "autolrs.tuners", "autolrs.optim", "autolrs.server",
              "autolrs.server.dashboard", "autolrs.callbacks"],
    package_dir={"autolrs.server": "server", "autolrs.callbacks": "callbacks"},
    package_data={"autolrs": ["py.typed"], "autolrs.server": ["defaults.yaml"],
                  "autolrs.server.dashboard": ["static/*"]},
    install_requires=[
        # A floor only: an installed torch >= 2.1 satisfies it and pip fetches nothing.
        "torch>=2.1",
        "numpy",
        "scipy",
        "scikit-learn",
        "pyzmq",
        "pyyaml",
    ],
    extras_require={
        # Plots (LRFinder.plot, the examples' curves) and progress bars: imported only when used.
        "plot": PLOT,
        "lightning": ["lightning"],
        "transformers": TRANSFORMERS,
        "vision": ["torchvision"],
        # Everything the test suite exercises, the framework adapters included.
        "test": ["pytest", "selenium", *PLOT, "lightning", *TRANSFORMERS, *LINT, *RELEASE],
    },
    entry_points={"console_scripts": ["autolrs-server=autolrs.server.cli:main"]},
)
