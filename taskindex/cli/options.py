"""Options several commands share: the probe's weights, the estimator, and how the images of DATA are read."""

from __future__ import annotations

import click


def _weights(ctx, param, value: str) -> str | None:
    return None if value == "random" else value  # the API's weights=None is a random init


def weights_option(help: str = "'imagenet', 'random', or a state_dict file for the probe."):
    """--weights imagenet|random|FILE, passed to the API as its `weights` (None for random)."""
    return click.option("--weights", default="imagenet", show_default=True, callback=_weights, help=help)


def estimator_options(f):
    """--estimator and --trim, shared by embed, create and rebuild (an index holds one estimator)."""
    f = click.option("--trim", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=None,
                     help="Share of images cut at each end per filter (default 0.1).")(f)
    return click.option("--estimator", type=click.Choice(["trimmed", "winsorized", "mean"]), default="trimmed",
                        show_default=True,
                        help="Per-filter aggregate over images; 'mean' is the paper's plain mean.")(f)


_DATA_OPTIONS = (
    click.option("--max-samples", type=click.IntRange(min=2), default=1000, show_default=True,
                 help="Class-balanced cap on the images of DATA used."),
    click.option("--image-column", default="image", show_default=True, help="Parquet/CSV column of images."),
    click.option("--label-column", default="label", show_default=True, help="Parquet/CSV column of labels."),
)


def data_options(f):
    """--max-samples, --image-column and --label-column: how DATA (folder, .parquet, .csv, sample:NAME) is read."""
    for option in reversed(_DATA_OPTIONS):
        f = option(f)
    return f


def skip_bad_images_option(f):
    """--skip-bad-images, for every command that embeds DATA: passed to the API as on_error='skip'."""
    return click.option("--skip-bad-images", "on_error", flag_value="skip", default="raise",
                        help="Embed the readable images and list the ones that cannot be decoded (default: stop, "
                             "naming them all).")(f)
