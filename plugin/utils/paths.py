"""Where a relative data path in a config points: one rule for the classification and point-cloud tasks."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_data_path(path, base_dirs=(REPO_ROOT,)):
    """`path` as given when it is absolute or exists from the working folder; else relative to the first of
    `base_dirs` (default: the repository root, where the shipped assets and the configs' default data paths live)
    where it exists; else as given (the caller reports it missing). mmdet configs follow mmengine instead: relative
    to the working folder."""
    path = os.path.expanduser(str(path))
    if os.path.isabs(path) or os.path.exists(path):
        return path
    for base in base_dirs:
        candidate = os.path.join(base, path)
        if os.path.exists(candidate):
            return candidate
    return path
