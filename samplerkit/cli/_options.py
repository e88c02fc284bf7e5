"""Options shared by several commands: model selection and ``--flag KEY=VALUE`` parsing."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import click

from .. import samplers as samplers_table
from ..errors import SamplerkitError
from ..generate import GRID_KNOBS
from ..guidance import GUIDANCE_KNOBS
from ..knobs import Knob
from ..remedies import REMEDY_KNOBS
from ..runs import load_model as load_with_flags
from ..runs import pick_device


def parse_value(text: str):
    """'3' -> 3, '0.1' -> 0.1, 'True'/'False' -> bool, anything else stays a string ('32,16,8')."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_flags(items: tuple[str, ...] | list[str]) -> dict:
    """``("num_channels=192", "learn_sigma=True")`` -> {"num_channels": 192, "learn_sigma": True}."""
    flags = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise SamplerkitError(f"bad --flag {item!r}; use --flag KEY=VALUE with the upstream flag name")
        flags[key] = parse_value(value)
    return flags


SAMPLING_FAMILIES = ("adm", "iddpm", "edm", "edm2", "dit", "sit", "adm-superres", "iddpm-superres")


def model_options(default_model: str | None, several: str | None = None,
                  families: tuple[str, ...] = SAMPLING_FAMILIES) -> Callable:
    """``--model``, ``--family``, ``--flag`` and ``--preset``, added to a click command. With ``several``
    (its help text), ``--model`` repeats and arrives as the tuple ``models`` (commands that compare
    models on the same images)."""
    if several:
        model = click.option("--model", "models", multiple=True, default=(default_model,), show_default=True,
                             help=several)
    else:
        model = click.option("--model", "model", default=default_model, show_default=True,
                             help="Zoo name (see `samplerkit models list`) or path to a checkpoint file.")

    def decorate(fn):
        @model
        @click.option("--family", type=click.Choice(list(families)), default=None,
                      help="Network family of a local checkpoint file (EDM .pkl files are detected).")
        @click.option("--flag", "flags", multiple=True, metavar="KEY=VALUE",
                      help="Upstream architecture/diffusion flag for a local .pt file; repeatable.")
        @click.option("--preset", default=None,
                      help="Zoo entry whose flags a local .pt file uses (overridden by --flag).")
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def _concrete_device(ctx, param, value):
    return str(pick_device(value)) if value == "auto" else value


def device_option() -> Callable:
    """``--device auto|cpu|cuda|cuda:N``; auto (the default of every command) is CUDA when available, else the CPU."""
    return click.option("--device", default="auto", show_default=True, callback=_concrete_device,
                        help="auto (CUDA when available, else cpu), cpu, cuda or cuda:N.")


def hidden_alias(*decls: str, **kwargs) -> Callable:
    """An old spelling of an option, kept hidden for one release (its value wins when given)."""
    return click.option(*decls, hidden=True, default=None, **kwargs)


def speed_option(default: str = "fast") -> Callable:
    """``--speed exact|fast|SETTINGS``: how the network executes (:mod:`samplerkit.speed`); the default is
    ``$SAMPLERKIT_SPEED`` when set, else ``default``."""
    return click.option(
        "--speed", "speed", default=None, metavar="exact|fast|SETTINGS",
        help="Network execution: exact (upstream arithmetic, bit for bit), fast (the fastest variant measured on "
             "this machine within 1e-3 of exact, autotuned once and cached) or settings like "
             "attention=sdpa,memory_format=channels_last,autocast=bfloat16,compile=on. "
             f"[default: $SAMPLERKIT_SPEED, else {default}]")


def load_model(model: str, family: str | None, flags: tuple[str, ...], preset: str | None, device="cpu"):
    """Load the model the user named, with its ``--flag KEY=VALUE`` flags; returns the denoiser."""
    return load_with_flags(model, family, parse_flags(flags), preset, device=device)


# Python names that are also plain words of messages: errors keep them as they are
_PROSE = ("disc", "schedule", "scaling", "variance", "respacing", "classifier")


def knob_table(remedies: bool = True, sampler_knobs: bool = True,
               guidance: bool = True) -> dict[str, tuple[Knob, object, list[str]]]:
    """Every option a sampling command generates, from the current tables: the grid's
    (:data:`samplerkit.generate.GRID_KNOBS`), every sampler's (:func:`samplerkit.samplers.table_knobs`),
    the remedies' (:data:`samplerkit.remedies.REMEDY_KNOBS`) and the guidance's
    (:data:`samplerkit.guidance.GUIDANCE_KNOBS`): name -> (Knob, default, samplers)."""
    table = {name: (knob, None, []) for name, knob in GRID_KNOBS.items()} if sampler_knobs else {}
    for name, (knob, default, takers) in (samplers_table.table_knobs() if sampler_knobs else {}).items():
        table[name] = (knob, default, takers) if name not in table else (table[name][0], default, takers)
    if remedies:
        table.update({name: (knob, None, []) for name, knob in REMEDY_KNOBS.items()})
    if guidance:
        table.update({name: (knob, None, []) for name, knob in GUIDANCE_KNOBS.items()})
    return table


def _knob_params() -> dict[str, str]:
    """click parameter name -> sampler option name, for every sampler and remedy knob of the current tables."""
    return {(knob.param or name): name for name, (knob, _, _) in knob_table(guidance=False).items()}


KNOBS = _knob_params()  # of the built-in tables; chosen_options reads the current ones


def _flags(names: tuple[str, ...] = ()) -> dict[str, str]:
    """Python name -> flag of every knob, but the plain words of :data:`_PROSE` unless ``names`` lists them."""
    return {name: knob.flag_of(name) for name, (knob, _, _) in knob_table().items()
            if name not in _PROSE or name in names}


def flag_of(option: str) -> str | None:
    """The command-line flag of sampler option ``option`` (None for an option the CLI does not set)."""
    entry = knob_table().get(option)
    return entry[0].flag_of(option) if entry else None


# library keyword arguments that are no sampler knob, as library errors name them ("pass overwrite=True"),
# and the flags every command that takes them spells them with (samplerkit.cli.main applies this to all errors)
ARGUMENT_FLAGS = {"overwrite=True": "--overwrite", "allow_resolution_mismatch=True": "--allow-resolution-mismatch",
                  "another csv_path": "another --csv file"}
# settings of runs, evaluations and training as their messages name them (no key is part of another's flag)
ARGUMENT_FLAGS.update({
    "class_labels ": "--class-labels ", "pass class_labels": "pass --class-labels", "low_res ": "--low-res ",
    "drop low_res": "drop --low-res", "then_upsample makes": "--then-upsample makes",
    "num_images must be >= 2": "--num-images must be >= 2", "another out folder": "another --out",
    "device='cuda'": "--device cuda", "device='cpu'": "--device cpu",
    "dtype and the speed setting": "--dtype and --speed", "the speed setting": "--speed", "bad speed ": "bad --speed ",
    "method='ode'": "--method ode", "method='vlb'": "--method vlb",
    "give sigma_min and sigma_max": "give --sigma-min and --sigma-max",
    "drop the family argument": "drop --family", "pass family='adm' or 'iddpm'": "pass --family adm or iddpm",
    "rebuild it with metrics ": "rebuild it with samplerkit fid-ref --metrics ",
    "the bootstrap needs rounds >= 2": "--bootstrap needs at least 2 rounds",
    "use kid_subset_size ": "use --kid-subset-size ", "use fid_mode ": "use --fid-mode ",
    "force_pipeline=True": "--force-pipeline", " precision=": " --precision ", " precond=": " --precond ",
    " regularizer=": " --regularizer ", " loss=": " --loss ", " microbatch=": " --microbatch ", " lr=": " --lr ",
    " wd_form=": " --wd-form ", "weight_decay, lambda_wd and grad_clip": "--weight-decay, --lambda-wd and --grad-clip",
    "already lambda_wd;": "already --lambda-wd;", "drop weight_decay": "drop --weight-decay",
    "ema_halflife_kimg must": "--ema-halflife-kimg must", "pass resume=True": "pass --resume",
    "download.forget on it (`samplerkit models verify": "`samplerkit models verify", "` with reset=True)": " --reset`",
    "continued with resume=True": "continued with --resume",
    "the architecture flag ": "--flag ", "network file as path=FILE": "network file as --inception FILE",
    ") as path=FILE or $": ") via --inception FILE or $",
})


def with_argument_flags(message: str) -> str:
    """``message`` with :data:`ARGUMENT_FLAGS` in the user's words."""
    for name, flag in ARGUMENT_FLAGS.items():
        message = message.replace(name, flag)
    return message


def with_flag_names(message: str, names: tuple[str, ...] = ()) -> str:
    """``message`` with the options' Python names replaced by their command-line flags: the one place
    where a library error (raised in Python's words) is given the user's words. ``names``: the option
    names the error lists (:attr:`samplerkit.errors.SamplerkitError.names`), shown as flags even where
    the name is also a plain word."""
    flags = _flags(tuple(names))
    pattern = re.compile(r"(?<![-\w])(" + "|".join(sorted(map(re.escape, flags), key=len, reverse=True)) + r")\b")
    return pattern.sub(lambda m: flags[m.group(1)], message)


def param_flags(command: click.Command, names: tuple[str, ...] = ()) -> dict[str, str]:
    """Python name -> flag of ``command``'s options whose name is a Python identifier no prose uses (it has
    an underscore: ``kid_subsets``, ``paired_with``), and of those ``names`` lists (``batch``, ``images``)."""
    flags = {}
    for param in command.params:
        longs = [o for o in param.opts if o.startswith("--")] if isinstance(param, click.Option) else []
        if longs and not param.hidden and ("_" in param.name or param.name in names):
            flags[param.name] = longs[0]
    return flags


def with_param_flags(message: str, command: click.Command, names: tuple[str, ...] = ()) -> str:
    """``message`` with the names of ``command``'s options (:func:`param_flags`) as the flags the user typed."""
    flags = param_flags(command, tuple(names))
    if not flags:
        return message
    pattern = re.compile(r"(?<![-\w/.])(" + "|".join(sorted(map(re.escape, flags), key=len, reverse=True)) +
                         r")(?![\w/-])")
    return pattern.sub(lambda m: flags[m.group(1)], message)


class ParsedCommand(click.Command):
    """A command that parses its flags into a library call: a library error it raises (in Python's words)
    names the flags the user typed (:func:`with_param_flags`). ``flag_words``: options named by a plain
    word (``batch``, ``probes``) that this command's library errors always mean as the option."""

    def __init__(self, *args, flag_words: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.flag_words = tuple(flag_words)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SamplerkitError as e:  # same error (and type), in the user's words
            e.args = (with_param_flags(str(e), self, (*e.names, *self.flag_words)),)
            raise


def knob_option(name: str, knob: Knob, default, takers: list[str]) -> click.Option:
    """The click option of one knob; no default, so only what the user set reaches the run."""
    flag = knob.flag_of(name)
    kind = knob.type or (type(default) if isinstance(default, bool | int | float | str) else str)
    if kind is bool and "/" not in flag and knob.flag is None:
        flag = f"{flag}/--no-{flag[2:]}"
    help_text = f"{knob.help} [{', '.join(takers)}]" if takers and len(takers) < len(samplers_table.SAMPLERS) \
        else knob.help
    decls = [*flag.split(" "), knob.param or name]
    if kind is bool:
        return click.Option(decls, is_flag=True, default=None, help=help_text)
    ptype = click.Choice(list(knob.choices)) if knob.choices else kind
    return click.Option(decls, type=ptype, default=() if knob.multiple else None, help=help_text,
                        metavar=knob.metavar, multiple=knob.multiple)


class TableChoice(click.Choice):
    """``click.Choice`` of the current sampler table (a row added at run time is a choice)."""

    def __init__(self):
        super().__init__([])

    @property
    def choices(self):
        return tuple(samplers_table.SAMPLERS)

    @choices.setter
    def choices(self, value):
        pass


# --help sections of the sampling commands; a parameter not named here is listed under "other"
_SECTIONS = {
    "model": ("model", "models", "family", "flags", "preset", "low_res", "then_upsample", "upsample_sampler",
              "upsample_steps", "data"),
    "sampler": ("sampler", "samplers", "steps", "seeds", "num_images", "class_labels"),
    "remedies": tuple(REMEDY_KNOBS),
    "guidance": tuple(GUIDANCE_KNOBS),
    "evaluation": ("ref", "ref_images", "metrics", "fid_mode", "kid_subsets", "kid_subset_size", "bootstrap_rounds",
                   "force_pipeline", "eval_seed", "t_values", "modes", "stride", "fid_ref", "reference", "seed",
                   "clip_denoised", "no_resize"),
    "output": ("out", "fmt", "grid", "overwrite", "csv_path", "plot_path", "pairs_dir", "show_table"),
    "execution": ("batch", "device", "dtype", "speed", "inception", "quiet"),
}


def _section(name: str) -> str:
    for title, names in _SECTIONS.items():
        if name in names:
            return title
    return "sampler" if name in _knob_params() and name not in REMEDY_KNOBS else "other"


class SamplerCommand(ParsedCommand):
    """A command whose sampler (and remedy, guidance) options are generated from the tables when it runs
    or prints its help, after the parameter ``knobs_after``, and whose --help lists its options in
    sections (model, sampler, remedies, guidance, output, execution); a library error it raises names
    the flags the user typed (:func:`with_flag_names`)."""

    def __init__(self, *args, knobs_after: str = "steps", remedies: bool = True, sampler_knobs: bool = True,
                 guidance: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.knobs_after, self.tables = knobs_after, (remedies, sampler_knobs, guidance)

    def get_params(self, ctx):
        params = super().get_params(ctx)
        table = knob_table(*self.tables)
        generated = [knob_option(n, *entry) for n, entry in table.items()]
        at = next((i + 1 for i, p in enumerate(params) if p.name == self.knobs_after), len(params))
        return params[:at] + generated + params[at:]

    def format_options(self, ctx, formatter) -> None:
        rows: dict[str, list] = {title: [] for title in (*_SECTIONS, "other")}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                rows[_section(param.name)].append(record)
        for title, records in rows.items():
            if records:
                with formatter.section(f"{title.capitalize()} options"):
                    formatter.write_dl(records)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SamplerkitError as e:  # same error (and type), with the flags the user typed
            e.args = (with_flag_names(str(e), e.names),)
            raise


def chosen_options(kwargs: dict) -> dict:
    """The sampler options the user set (click parameter names -> sampler option names)."""
    params = _knob_params()
    return {params[k]: v for k, v in kwargs.items() if k in params and v is not None}
