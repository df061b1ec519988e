"""One distribution, three import names: autolrs, autolrs.server (server/), autolrs.callbacks (callbacks/)."""

from setuptools import setup

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
              "autolrs.callbacks"],
    package_dir={"autolrs.server": "server", "autolrs.callbacks": "callbacks"},
    package_data={"autolrs.server": ["defaults.yaml"]},
    install_requires=[
        # A floor only: an installed torch >= 2.1 satisfies it and pip fetches nothing.
        "torch>=2.1",
        "numpy",
        "scipy",
        "scikit-learn",
        "pyzmq",
        "pyyaml",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"vision": ["torchvision"], "test": ["pytest"]},
    entry_points={"console_scripts": ["autolrs-server=autolrs.server.cli:main"]},
)
