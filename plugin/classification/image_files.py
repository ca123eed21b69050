"""Reading image files with PIL: which files of an image folder are images, one-line warnings for what the reader
skips or must upscale, the image-folder data set, and one error line for an image PIL cannot decode.

An image is any file whose extension a PIL plugin can open (`PIL.Image.registered_extensions()` filtered by
`Image.OPEN`: .jpg, .png, .webp, .bmp, .tif, .gif, …), so no readable format is dropped for its name. Other files are
skipped with one warning per split that gives their count (hidden files such as .DS_Store are skipped silently).
Images smaller than the model's patch size in either side are read (the transform upscales them, e.g. a 1x1 image to
a flat 224x224) but named in one warning with their count: such an input carries almost nothing for calibration or
evaluation. Sizes come from the image headers only (PIL's lazy open), no pixels are decoded.
"""
import contextlib
import logging
import os
import struct

from torch.utils.data import Dataset

from ..errors import UserInputError

log = logging.getLogger(__name__)


def readable_extensions():
    """Lower-case extensions (with the dot) of every format this PIL can open."""
    from PIL import Image
    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


def image_files(split_dir, classes):
    """[(path, label)] of the images in split_dir/<class>/ for each class name (label = its index), sorted by name;
    warns once, with the count, about the files skipped."""
    extensions = readable_extensions()
    samples, skipped = [], []
    for label, name in enumerate(classes):
        for entry in sorted(os.scandir(os.path.join(split_dir, name)), key=lambda e: e.name):
            if not entry.is_file() or entry.name.startswith("."):
                continue
            (samples.append((entry.path, label)) if entry.name.lower().endswith(extensions)
             else skipped.append(entry.path))
    if skipped:
        log.warning("image folder %s: skipped %d file(s) that are no image format PIL reads (e.g. %s)",
                    split_dir, len(skipped), skipped[0])
    return samples


def patch_size(model):
    """(H, W) of the model's patch embedding, or None when it has none that says so."""
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else tuple(size)


def warn_small_images(paths, patch, where):
    """One warning with the count of `paths` whose image is smaller than `patch` = (H, W) on either side. Files PIL
    cannot open are left to the reader, which refuses them with one line when it gets to them."""
    from PIL import Image
    if patch is None:
        return 0
    small = []
    for path in paths:
        try:
            with Image.open(path) as im:  # lazy: reads the header only
                width, height = im.size
        except Exception:  # noqa: BLE001  (a damaged file: reported by the reader itself)
            continue
        if height < patch[0] or width < patch[1]:
            small.append((path, width, height))
    if small:
        path, width, height = small[0]
        log.warning("%s: %d image(s) smaller than the model's %dx%d patch, upscaled by the transform (e.g. %s, "
                    "%dx%d)", where, len(small), patch[1], patch[0], path, width, height)
    return len(small)


class ImageFolderDataset(Dataset):
    """Image files with labels, read with PIL as RGB and passed through `transform`; `patch` = the model's patch size
    (H, W), for `warn_small`."""

    def __init__(self, samples, classes, transform, patch=None):
        self.samples, self.classes, self.transform, self.patch = samples, classes, transform, patch

    def warn_small(self, indices, what):
        """Warn (one line, with the count) about the images at `indices` smaller than the model's patch."""
        return warn_small_images([self.samples[i][0] for i in indices], self.patch, what)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with image_errors(path):
            im = open_rgb(path)
        return self.transform(im), label


# What PIL raises for a damaged, truncated or absurdly large image (UnidentifiedImageError is an OSError).
def pil_errors():
    from PIL import Image
    return (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


@contextlib.contextmanager
def image_errors(where):
    try:
        yield
    except pil_errors() as exc:
        raise UserInputError(f"cannot decode image {where}: {type(exc).__name__}: {exc}") from exc


def open_rgb(source):
    from PIL import Image
    with Image.open(source) as im:
        return im.convert("RGB")  # decodes the whole image here, so damage shows up inside image_errors
