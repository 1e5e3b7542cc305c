"""SC-EGG in the browser: upload a picture, see the classes, the attributes behind them and where
the model looked; add a class from its attributes and see it ranked at once.

A Hugging Face Space (Gradio SDK) runs this file as it is; locally:

    pip install -e ".[demo]"
    python examples/space/app.py MODEL_FOLDER_OR_HUB_ID        # then open http://127.0.0.1:7860

With the `scegg` package installed the model loads with the package's own code; without it (a
Space whose requirements.txt lists only transformers, torch and gradio) the checkpoint's
remote-code files run, which needs `--trust_remote_code` (or SCEGG_TRUST_REMOTE_CODE=1): that
choice stays with whoever starts the app. SCEGG_MODEL names the model when no argument does.

The evidence comes from the pipeline's `return_attributes=K` (see the checkpoint's
pipeline_scegg.py): the K attributes seen most strongly (e_l, Eq. 2), and per class the attributes
whose contribution to its local score (Eq. 3) is most positive (supporting) or most negative
(contradicting). Added classes live in the browser session only; the loaded model is not changed.
Gradio's analytics and version check are off: the app makes no request of its own to the internet.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402 - the environment above must be set before gradio reads it
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


class UserError(ValueError):
    """A mistake the page reports in its status line (bad picture, bad class table)."""


@dataclass
class Settings:
    """What one classification shows: how many classes, how many attributes, which maps."""

    top_k: int = 5
    attributes: int = 5
    maps: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
def load_pipeline(model: str, trust_remote_code: bool = False):
    """The SC-EGG image-classification pipeline of a folder or Hub id that reads pictures (it
    carries its region backbone)."""
    pipe = _pipeline(model, trust_remote_code)
    if getattr(pipe.model, "backbone", None) is None:
        raise SystemExit(f"{model} has no region backbone, so it cannot read pictures: embed the one its features "
                         f"came from with `scegg attach-backbone {model} WEIGHTS --output DIR` and start the app on DIR")
    return pipe


def _pipeline(model: str, trust_remote_code: bool):
    """The package's code when it is installed, else the checkpoint's own remote code (only when
    the user trusts it)."""
    try:
        from modeling_scegg.hub import load_image_processor, load_model
        from modeling_scegg.pipeline_scegg import SCEGGImageClassificationPipeline
    except ImportError:
        from transformers import pipeline

        if not trust_remote_code:
            raise SystemExit(f"the scegg package is not installed, so {model} can only run its own remote code: "
                             "pass --trust_remote_code (or set SCEGG_TRUST_REMOTE_CODE=1) if you trust it") from None
        return pipeline("image-classification", model=model, trust_remote_code=True)
    return SCEGGImageClassificationPipeline(model=load_model(model, for_images=True).eval(),
                                            image_processor=load_image_processor(model))


def evidence_module(pipe):
    """The module of the pipeline class (package or remote code): its evidence helpers match it."""
    return importlib.import_module(type(pipe).__module__)


def with_classes(pipe, names: list[str], attributes: np.ndarray):
    """A new pipeline whose model has the added classes (`add_classes`: the generator synthesises
    their features, the final classifiers are refit); the backbone is shared, not copied."""
    model = pipe.model
    memo = {id(model.backbone): model.backbone} if getattr(model, "backbone", None) is not None else {}
    extended = copy.deepcopy(model, memo)
    try:
        extended.add_classes(names, torch.tensor(attributes), generator=torch.Generator().manual_seed(0))
    except ValueError as error:
        raise UserError(str(error)) from error
    return type(pipe)(model=extended.eval(), image_processor=pipe.image_processor)


# ----------------------------------------------------------------------------------------------
# one picture
# ----------------------------------------------------------------------------------------------
def read_picture(pipe, path: str | None) -> Image.Image:
    """The uploaded file read as every path of the model reads pictures (its pipeline module's
    `load_picture`: formats by content, bounded size, EXIF), or a UserError saying why not."""
    if not path:
        raise UserError("Upload a picture to classify it.")
    reader = evidence_module(pipe)
    try:
        return reader.load_picture(path, getattr(pipe.image_processor, "decode_size", None))
    except reader.UnusableImage as error:
        raise UserError(f"{os.path.basename(path)} could not be read: {error}") from error


def explain(pipe, picture: Image.Image, settings: Settings) -> dict:
    """One forward pass, read twice: GZSL (all classes) and CZSL (unseen classes), both explained,
    with the attention maps of the chosen attributes (the K seen ones when none are chosen)."""
    module = evidence_module(pipe)
    inputs = pipe.preprocess(picture)
    forward, post = module.evidence_parameters(settings.attributes, list(settings.maps) or True)
    outputs = pipe.forward(inputs, **forward)
    gzsl = pipe.postprocess(outputs, top_k=settings.top_k, **post)
    czsl = pipe.postprocess(outputs, top_k=settings.top_k, czsl=True, return_attributes=settings.attributes)
    crop = module.picture_from_pixels(inputs["pixel_values"][0], pipe.image_processor)
    return {"gzsl": gzsl, "czsl": czsl, "crop": crop}


def _contributions(entries: list[dict]) -> str:
    return ", ".join(f"{e['attribute']} ({e['contribution']:+.3f})" for e in entries) or "-"


def tables(result: dict) -> tuple[dict, dict, list, list, list]:
    """The page's outputs: GZSL and CZSL labels, seen attributes, per-class evidence, the maps."""
    gzsl, czsl = result["gzsl"], result["czsl"]
    seen = [[a["attribute"], round(a["score"], 4)] for a in gzsl["attributes"]]
    evidence = [[kind, rank, p["label"], round(p["score"], 4), _contributions(p["supporting"]),
                 _contributions(p["contradicting"])]
                for kind, ranked in (("GZSL", gzsl), ("CZSL", czsl))
                for rank, p in enumerate(ranked["predictions"], start=1)]
    gallery = [(result["crop"], "the crop the model saw")] + [
        (overlay, f"attention: {name}") for name, overlay in gzsl["attention_maps"].items()]
    return ({p["label"]: p["score"] for p in gzsl["predictions"]},
            {p["label"]: p["score"] for p in czsl["predictions"]}, seen, evidence, gallery)


def rank_of(pipe, picture: Image.Image, names: list[str]) -> str:
    """Where the added classes rank for the current picture, among all and among unseen classes."""
    config = pipe.model.config
    outputs = pipe.forward(pipe.preprocess(picture))  # one backbone pass, read for both rankings
    gzsl = [p["label"] for p in pipe.postprocess(outputs, top_k=config.num_classes)]
    czsl = [p["label"] for p in pipe.postprocess(outputs, top_k=config.num_classes, czsl=True)]
    return "; ".join(f"{name} ranks #{gzsl.index(name) + 1} of {len(gzsl)} (GZSL) and #{czsl.index(name) + 1} "
                     f"of {len(czsl)} (CZSL) for this picture" for name in names)


# ----------------------------------------------------------------------------------------------
# adding classes
# ----------------------------------------------------------------------------------------------
def attribute_table(pipe) -> list[list]:
    """The editable one-class table: one row per attribute, value 0."""
    return [[name, 0.0] for name in evidence_module(pipe).attribute_names(pipe.model.config)]


def class_from_table(name: str, rows) -> tuple[list[str], np.ndarray]:
    """One class from the (attribute, value) table."""
    if not (name or "").strip():
        raise UserError("Give the new class a name.")
    values = pd.DataFrame(rows).iloc[:, 1] if len(rows) else pd.Series([], dtype=float)
    try:
        numbers = pd.to_numeric(values, errors="raise").to_numpy(dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise UserError(f"every attribute value must be a number ({error})") from error
    return [name.strip()], numbers[None, :]


def classes_from_csv(path: str, attribute_names: list[str]) -> tuple[list[str], np.ndarray]:
    """Classes from a CSV `class_name,<the model's attribute columns>` (as `scegg add-classes`)."""
    name = os.path.basename(path)
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise UserError(f"{name} is not a CSV file this app can read ({error})") from error
    header = [str(c).strip() for c in table.columns]
    if header[:1] != ["class_name"] or len(header) != len(attribute_names) + 1:
        raise UserError(f"{name}: the header must be class_name and the model's {len(attribute_names)} attribute "
                        f"columns, got {len(header) - 1} attribute columns")
    try:
        values = table.iloc[:, 1:].apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise UserError(f"{name}: attribute values must be numbers ({error})") from error
    return [str(n).strip() for n in table["class_name"]], values


# ----------------------------------------------------------------------------------------------
# the page
# ----------------------------------------------------------------------------------------------
EMPTY = (None, None, [], [], [])


class Demo:
    """The event handlers of one loaded model; added classes live in each session's state."""

    def __init__(self, pipe, model_name: str):
        self.pipe, self.model_name = pipe, model_name

    def describe(self, pipe) -> str:
        config = pipe.model.config
        return (f"**Model** `{self.model_name}`: {config.num_classes} classes ({len(config.seen_class_ids)} seen in "
                f"training, {len(config.unseen_class_ids)} unseen), {config.num_attributes} attributes.")

    def classify(self, path, top_k, attributes, maps, session):
        """Everything the page shows for the uploaded picture; a bad file only changes the status."""
        pipe = session or self.pipe
        try:
            picture = read_picture(pipe, path)
            settings = Settings(int(top_k), int(attributes), tuple(maps or ()))
            shown = tables(explain(pipe, picture, settings))
        except UserError as error:
            return (*EMPTY, f"**Error:** {error}")
        return (*shown, f"**Classified** {os.path.basename(path)}: ranked among {pipe.model.config.num_classes} classes.")

    def add(self, name, rows, csv_path, path, top_k, attributes, maps, session):
        """Add the classes (CSV upload, else the table), then classify the current picture again."""
        pipe = session or self.pipe
        names_of = evidence_module(pipe).attribute_names(pipe.model.config)
        try:
            names, values = classes_from_csv(csv_path, names_of) if csv_path else class_from_table(name, rows)
            extended = with_classes(pipe, names, values)
        except UserError as error:
            return (session, *self.classify(path, top_k, attributes, maps, session)[:-1], csv_path, f"**Error:** {error}",
                    self.describe(pipe))
        shown = self.classify(path, top_k, attributes, maps, extended)
        where = rank_of(extended, read_picture(extended, path), names) if path and shown[0] is not None else ""
        return (extended, *shown[:-1], None, f"**Added** {', '.join(names)}. {where}", self.describe(extended))


def build_demo(pipe, model_name: str) -> gr.Blocks:
    """The page: picture and settings, the two rankings, the attribute evidence, the maps, and a
    section to add classes."""
    demo_state = Demo(pipe, model_name)
    names = evidence_module(pipe).attribute_names(pipe.model.config)
    with gr.Blocks(title="SC-EGG: zero-shot classes and why", analytics_enabled=False) as demo:
        gr.Markdown("# SC-EGG zero-shot classification, explained by attributes\nUpload a picture: the model ranks "
                    "every class (GZSL) and the classes it never saw in training (CZSL), names the attributes it sees, "
                    "which of them support or contradict each class, and shows where it looked for them.")
        info = gr.Markdown(demo_state.describe(pipe), elem_id="model-info")
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Picture", file_types=["image"], type="filepath", elem_id="picture")
                top_k = gr.Slider(1, 20, value=5, step=1, label="classes shown")
                attributes = gr.Slider(1, min(20, len(names)), value=min(5, len(names)), step=1,
                                       label="attributes shown (K)")
                maps = gr.Dropdown(names, multiselect=True, label="attention maps for (empty: the K seen attributes)")
                status = gr.Markdown("Upload a picture to classify it.", elem_id="status")
            with gr.Column(scale=2):
                gzsl = gr.Label(label="GZSL: all classes", elem_id="gzsl")
                czsl = gr.Label(label="CZSL: unseen classes only", elem_id="czsl")
        seen = gr.Dataframe(headers=["attribute", "seen (e_l)"], label="Attributes the model sees most strongly",
                            elem_id="attributes", interactive=False)
        gr.Markdown("**Reading the evidence.** Each attribute adds *seen score x (class value - average class "
                    "value)* to a class's attribute score: **supporting** attributes are seen and typical of the class "
                    "(or not seen and atypical of it), **contradicting** ones are seen but atypical of it (or typical "
                    "of it but not seen).")
        evidence = gr.Dataframe(headers=["task", "rank", "class", "score", "supporting (contribution)",
                                         "contradicting (contribution)"], label="Why these classes",
                                elem_id="evidence", interactive=False, wrap=True, max_height=800,
                                column_widths=["7%", "6%", "12%", "8%", "33.5%", "33.5%"])
        gallery = gr.Gallery(label="Where the model looked (attention, red = most)", columns=6, height=220,
                             elem_id="maps")
        add_outputs = _add_class_section(demo_state, pipe, names, session, upload, top_k, attributes, maps)
        outputs = [gzsl, czsl, seen, evidence, gallery]
        inputs = [upload, top_k, attributes, maps, session]
        for trigger in (upload.change, top_k.release, attributes.release, maps.change):
            trigger(demo_state.classify, inputs, [*outputs, status])
        add_outputs["button"].click(demo_state.add, [add_outputs["name"], add_outputs["table"], add_outputs["file"],
                                                     upload, top_k, attributes, maps, session],
                                    [session, *outputs, add_outputs["file"], status, info])
    return demo


def _add_class_section(demo_state: Demo, pipe, names, session, upload, top_k, attributes, maps) -> dict:
    with gr.Accordion("Add a class from its attributes (refits the final classifiers, this session only)",
                      open=False, elem_id="add-classes"):
        gr.Markdown("Either fill in one class (name and attribute values, any scale) or upload a CSV "
                    "`class_name,<attribute columns>` with one row per class, as `scegg add-classes` reads.")
        with gr.Row():
            name = gr.Textbox(label="class name", elem_id="new-class-name")
            csv_file = gr.File(label="or a CSV of classes", file_types=[".csv"], type="filepath", elem_id="classes-csv")
        table = gr.Dataframe(value=attribute_table(pipe), headers=["attribute", "value"], datatype=["str", "number"],
                             type="array", interactive=True, static_columns=[0], max_height=300,
                             elem_id="new-class-attributes")
        button = gr.Button("Add and rank", variant="primary", elem_id="add-class")
    return {"name": name, "file": csv_file, "table": table, "button": button}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=os.environ.get("SCEGG_MODEL"),
                        help="model folder or Hub id (default: $SCEGG_MODEL)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        default=os.environ.get("SCEGG_TRUST_REMOTE_CODE", "") in ("1", "true", "True"),
                        help="without the scegg package: run the checkpoint's own code (only if you trust it)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("name a model folder or Hub id (or set SCEGG_MODEL)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    demo = build_demo(load_pipeline(args.model, args.trust_remote_code), args.model)
    demo.queue().launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=True)


if __name__ == "__main__":
    main(sys.argv[1:])
