"""Where the Hydra configs are: ``conf/`` beside the package in a checkout (editable install), or
``ssl_dr/conf`` inside an installed wheel (``setup.py`` ships the same folder there); and the arm and experiment of
every pretext, derived from ``conf/pretext/`` into Hydra's ConfigStore, so a new pretext is its module and one file."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> str:
    """The folder holding ``train.yaml`` (the checkout's ``conf/`` wins, so edits there take effect), its pretexts'
    arms and experiments registered first: every composition finds its configs here, so none can miss them."""
    for candidate in (PACKAGE_DIR.parent / "conf", PACKAGE_DIR / "conf"):
        if (candidate / "train.yaml").is_file():
            register_pretext_arms(candidate)
            return str(candidate)
    raise FileNotFoundError(f"no Hydra configs (train.yaml) in {PACKAGE_DIR.parent / 'conf'} or "
                            f"{PACKAGE_DIR / 'conf'}: reinstall ssl_dr (pip install .)")


def pretext_arms() -> tuple[str, ...]:
    """Arms named after the pretext they run: one per ``conf/pretext/<name>.yaml`` (``_*.yaml``: shared settings)."""
    return _pretexts(Path(config_dir()))


def _pretexts(conf: Path) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (conf / "pretext").glob("*.yaml") if not p.stem.startswith("_")))


def register_pretext_arms(conf: Path) -> None:
    """Register, for every pretext of ``conf``, the arm ``arm=<name>`` (``init: pretext``, choosing ``pretext: <name>``,
    also when a sweep varies ``arm``) and the experiment ``experiment=<name>`` (that arm). A file of the same name
    in ``conf/arm/`` or ``conf/experiment/`` is the option instead (``arm/mae.yaml`` also picks a ViT): nothing is
    registered under its name, since Hydra refuses a stored node with a defaults list beside a file of that name."""
    store = ConfigStore.instance()
    for name in _pretexts(conf):
        if not (conf / "arm" / f"{name}.yaml").is_file():
            store.store(group="arm", name=name, package="_global_",
                        node={"defaults": [{"override /pretext": name}], "arm": name, "init": "pretext"})
        if not (conf / "experiment" / f"{name}.yaml").is_file():
            store.store(group="experiment", name=name, package="_global_",
                        node={"defaults": [{"override /arm": name}]})
