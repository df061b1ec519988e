"""One distribution, three import names: autolrs, autolrs.server (server/), autolrs.callbacks (callbacks/)."""

from setuptools import setup

PLOT = ["matplotlib", "tqdm"]
TRANSFORMERS = ["transformers", "accelerate"]  # Trainer needs accelerate

setup(
    name="autolrs",
    version="0.1.0",
    description="Learning-rate tuning as a service for PyTorch: a tuner server and a thin training-loop callback",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
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
        "test": ["pytest", "selenium", *PLOT, "lightning", *TRANSFORMERS],
    },
    entry_points={"console_scripts": ["autolrs-server=autolrs.server.cli:main"]},
)
