"""``fedtune`` command line: simulate, tune, stop, runs, export, verify, generate, privacy show/audit,
data synthetic/check, certs, node-key, roster build, app hash, config reference, model prepare."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedtune.common.config import ConfigError
from fedtune.common.errors import loaded_classes


def _cmd_simulate(args: argparse.Namespace) -> int:
    from fedtune.common.config import load_preset
    from fedtune.lab.simulation import resume_config, run_simulation_config

    if args.resume and (args.out or args.baselines):
        raise ConfigError("--resume continues the run in its own folder: drop --out / --baselines")
    cfg, info = resume_config(args.resume, args.preset, args.set) if args.resume else load_preset(args.preset, args.set)
    result = run_simulation_config(cfg, info, args.resume or args.out, args.quiet)
    if args.baselines:
        from fedtune.coordinator.report import comparison_table
        from fedtune.lab.compare import simulate_with_baselines

        rows = simulate_with_baselines(cfg, info, result, args.quiet)
        print("\n" + "\n".join(comparison_table([r.to_dict() for r in rows])))
    first, last = result.metrics[0], result.metrics[-1]
    if result.stopped:
        from fedtune.coordinator.report import stopped_when

        print(f"\nfedtune: stopped early {stopped_when(result.stopped)}: {result.stopped['reason']}")
    print(
        f"\nfedtune: finished {last['round']} rounds in {result.seconds:.0f}s\n"
        f"  eval accuracy  round 0: {first['eval_accuracy']:.1%}  ->  round {last['round']}: {last['eval_accuracy']:.1%}\n"
        f"  results:  {result.out}\n"
        f"  report:   {result.out / 'report.md'}\n"
        f"  adapter:  {result.out / 'adapter'}"
    )
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from fedtune.common.config import load_preset
    from fedtune.lab.tune.study import make_job, run_study

    cfg, info = load_preset(args.preset, args.set)
    job = make_job(cfg, info, args.trials, args.out, args.storage, args.study, args.timeout)
    run_study(job, print_line=lambda line: print(line, flush=True))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from fedtune.coordinator.stop_request import request_stop

    out = Path(args.run_dir)
    if not (out / "run.json").is_file():
        raise ConfigError(f"{out} is not a run's results folder (it has no run.json)")
    path = request_stop(out, args.reason)
    print(f"fedtune: asked the run in {out} to stop after its current round ({path.name} written)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from peft import PeftModel

    from fedtune.common.config import ModelConfig
    from fedtune.common.data import PromptEncoder
    from fedtune.common.evaluation import generate
    from fedtune.common.model import load_base_model, load_tokenizer

    adapter = Path(args.adapter)
    merged = (adapter / "config.json").is_file() and not (adapter / "adapter_config.json").is_file()
    if not merged and not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter} is neither a PEFT adapter folder (adapter_config.json) nor a model folder "
                          "(config.json, e.g. the merged/ folder of `fedtune export --merged`)")
    meta_path = adapter / "fedtune.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if merged:  # the base model with the adapter merged in: it loads like any model folder
        model_cfg = ModelConfig(name=str(adapter.resolve()))
        tok, model = load_tokenizer(model_cfg.name), load_base_model(model_cfg)
    else:
        name = args.model or meta.get("model.name")
        if not name:
            raise ConfigError("cannot tell which base model this adapter belongs to: pass --model NAME")
        model_cfg = ModelConfig(name=name)
        tok = load_tokenizer(name)
        model = PeftModel.from_pretrained(load_base_model(model_cfg), str(adapter))
    messages = []
    if args.system or meta.get("system"):
        messages.append({"role": "system", "content": args.system or meta["system"]})
    messages.append({"role": "user", "content": args.prompt})
    print(generate(model, PromptEncoder(tok, model_cfg.max_length), messages, args.max_new_tokens))
    return 0


def _cmd_privacy_show(args: argparse.Namespace) -> int:
    from fedtune.node.privacy.ledger import show_ledgers

    print(show_ledgers(Path(args.state)))
    return 0


def _cmd_privacy_audit(args: argparse.Namespace) -> int:
    from fedtune.lab.audit.run import audit, exit_code

    out = args.out or f"runs/audit-{Path(args.preset).stem}"
    result = audit(args.preset, out, args.set, args.canaries, args.node, not args.no_power_check, args.guesses,
                   args.confidence, args.seed, args.quiet)
    print()
    for r in result.runs:
        reported = "inf (DP off)" if r.reported_epsilon is None else f"{r.reported_epsilon:.2f}"
        print(f"fedtune audit: {r.setting}: eps_hat={r.bound.epsilon:.2f} ({100 * r.bound.confidence:.0f}% confidence)"
              f" reported_eps={reported} exposure_mean={r.exposure.mean:.2f} bits (chance {r.exposure.chance:.2f})"
              f" wall={r.seconds:.0f}s")
    print(f"fedtune audit: outcome {result.outcome.upper()} - report: {result.report}")
    return exit_code(result)


def _cmd_model_prepare(args: argparse.Namespace) -> int:
    from fedtune.common.model import resolve_model_path

    print(resolve_model_path(args.name))
    return 0


def _cmd_certs(args: argparse.Namespace) -> int:
    from fedtune.coordinator.certs import create_certificates

    paths = create_certificates(args.out, args.host, days=args.days, force=args.force)
    print(f"CA certificate  {paths.ca_cert}   (give it to every node operator: --root-certificates)\n"
          f"CA key          {paths.ca_key}   (keep it private; it signs server certificates)\n"
          f"server cert     {paths.server_cert}   (flower-superlink --ssl-certfile; valid for {', '.join(args.host)})\n"
          f"server key      {paths.server_key}   (flower-superlink --ssl-keyfile)")
    return 0


def _cmd_node_key(args: argparse.Namespace) -> int:
    from fedtune.node.node_key import create_node_key

    key = create_node_key(args.out, args.name, force=args.force)
    print(f"private key   {key.private}   (stays on this node: flower-supernode --auth-supernode-private-key)\n"
          f"public key    {key.public}   (send it to the coordinator, who admits it with "
          f"`server/admit-node.sh {key.public.name} {args.name}`)\n"
          f"signing key   {key.signing_key}   (stays on this node: signing-key = ... in its node config)\n"
          f"roster entry  {key.roster_entry}   (send it to the federation; every node pins the roster "
          "`fedtune roster build` makes of all entries)")
    return 0


def _cmd_app_hash(args: argparse.Namespace) -> int:
    from fedtune.node.app_guard import app_hash

    app_dir = Path(args.app_dir)
    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{app_dir} has no pyproject.toml: give the folder of the Flower app you reviewed "
                          "(a clean checkout of the approved commit)")
    print(app_hash(app_dir))
    print(f"approve it on a node: approved-apps = \"<this hash>\" in its node-config.toml", file=sys.stderr)
    return 0


def _cmd_roster_build(args: argparse.Namespace) -> int:
    from fedtune.common.secagg.roster import build_roster

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} already exists; use --force to replace it")
    roster = build_roster([Path(e) for e in args.entries], out)
    print(f"{out}: {len(roster.keys)} node(s): {', '.join(sorted(roster.keys))}\n"
          "check every key with its node's operator out of band, then each node pins this file "
          "(roster = ... in its node config)")
    return 0


def _cmd_data_synthetic(args: argparse.Namespace) -> int:
    from fedtune.common.data import generate_triage
    from fedtune.common.data.records import write_jsonl

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(generate_triage(args.records, args.seed), out)
    print(f"{args.records} synthetic triage records (seed {args.seed}) -> {out}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    import dataclasses

    from fedtune.common.config import RunConfig, load_preset
    from fedtune.common.data import PromptEncoder, RecordSpec
    from fedtune.common.data.check import check_file
    from fedtune.common.model import load_tokenizer

    cfg = load_preset(args.config)[0] if args.config else RunConfig()
    given = {"format": args.format, "text_column": args.text_column, "label_column": args.label_column,
             "labels": args.labels, "group_column": args.group_column, "split": args.split}
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **{k: v for k, v in given.items() if v is not None}))
    cfg.validate()
    spec = RecordSpec.from_config(cfg.data)
    encoder = None
    if not args.no_tokens:
        encoder = PromptEncoder(load_tokenizer(cfg.model.name), cfg.model.max_length)
    report = check_file(args.file, spec, encoder)
    print(report.render(spec))
    return 0 if report.ok else 1


def _cmd_runs(args: argparse.Namespace) -> int:
    from fedtune.common.files import atomic_write_text
    from fedtune.lab.runs_table import runs_table

    table = runs_table(args.folders)
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fedtune.release.export import export_run

    done = export_run(args.run_dir, args.out, merged=args.merged, dtype=args.dtype, sign_with=args.sign)
    for part, size in done.sizes.items():
        print(f"{part}/: {size / 2**20:.1f} MiB in {done.seconds[part]:.1f} s")
    print(f"fedtune: exported to {done.folder} (check it later with: fedtune verify {done.folder})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from fedtune.release.manifest import check_signature, verify

    problems = verify(args.folder)
    if args.key:
        problems += [p for p in [check_signature(args.folder, args.key)] if p]
    for problem in problems:
        print(f"FAILED {problem}")
    signed = f", signed by {Path(args.key).name}" if args.key else " (signature not checked: pass --key PUB.pem)"
    print(f"OK: every file matches MANIFEST.sha256{signed}" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


def _cmd_config_reference(args: argparse.Namespace) -> int:
    from fedtune.common.files import atomic_write_text
    from fedtune.lab.config_reference import reference_markdown

    page = reference_markdown()
    if args.out:
        atomic_write_text(args.out, page)
        print(f"fedtune: wrote {args.out}")
    else:
        print(page, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedtune", description="Federated, privacy-preserving LoRA fine-tuning on Flower")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="run a federated simulation preset on Flower's Simulation Runtime")
    s.add_argument("preset", nargs="?", help="preset TOML (e.g. simulations/quickstart.toml); default: built-in defaults")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    s.add_argument("--out", help="results folder (default: runs/<timestamp>)")
    s.add_argument("--quiet", action="store_true", help="do not stream Flower's log (it is still saved)")
    s.add_argument("--resume", metavar="RESULTS_DIR",
                   help="continue the run in RESULTS_DIR from its last completed round (its saved preset is used "
                        "unless PRESET is given; --set federation.rounds=N extends it)")
    s.add_argument("--baselines", action="store_true",
                   help="also run, on the same split and total local steps: the base model, local-only and "
                        "centralized training, and the federated run, each with and without DP; writes a comparison "
                        "table into the report")
    s.set_defaults(func=_cmd_simulate)

    t = sub.add_parser("tune", help="hyperparameter search: an Optuna study of simulations of a preset's [tune] space")
    t.add_argument("preset", help="a preset with a [tune] table (e.g. simulations/quickstart.toml)")
    t.add_argument("--trials", type=int, required=True,
                   help="trials the study should hold in total (running the command again continues it)")
    t.add_argument("--timeout", type=float, metavar="MIN", help="start no new trial after this many minutes")
    t.add_argument("--out", help="study folder: one folder per trial, report, best.toml (default runs/tune-STUDY)")
    t.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL (default: sqlite in the study folder); a PostgreSQL or MySQL URL lets "
                        "several machines run trials of one study")
    t.add_argument("--study", help="study name (default: the preset's file name)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset value")
    t.set_defaults(func=_cmd_tune)

    st = sub.add_parser("stop", help="ask a running federation to end cleanly after its current round")
    st.add_argument("run_dir", help="the run's results folder (the coordinator's output.dir)")
    st.add_argument("--reason", default="stop requested by the operator", help="recorded in run.json and the report")
    st.set_defaults(func=_cmd_stop)

    g = sub.add_parser("generate", help="answer a prompt with the base model + a fine-tuned adapter")
    g.add_argument("prompt")
    g.add_argument("--adapter", required=True, help="adapter folder (e.g. runs/<ts>/adapter), or a merged model "
                   "folder (the merged/ of `fedtune export --merged`)")
    g.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    g.add_argument("--system", help="system message (default: the one stored with the adapter, if any)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.set_defaults(func=_cmd_generate)

    pv = sub.add_parser("privacy", help="a node's privacy ledger; an empirical audit of a simulated run")
    pvsub = pv.add_subparsers(dest="privacy_command", required=True)
    ps = pvsub.add_parser("show", help="print the privacy ledger(s) kept in a node's state directory")
    ps.add_argument("--state", required=True, help="the node's state directory (searched recursively)")
    ps.set_defaults(func=_cmd_privacy_show)
    pa = pvsub.add_parser("audit", help="measure what a simulated run leaks with canaries (one-run audit) and hold it "
                                        "against the node's reported ε; exits 1 if ε̂ exceeds it")
    pa.add_argument("preset", help="the preset to audit (e.g. simulations/quickstart.toml)")
    pa.add_argument("--canaries", type=int, default=100, metavar="M",
                    help="canaries, each inserted into the node's training records with probability 1/2 (default 100)")
    pa.add_argument("--node", help="the simulated node to audit: hospital-N (default hospital-0)")
    pa.add_argument("--out", help="audit folder (default runs/audit-PRESET); must be new or empty")
    pa.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset value")
    pa.add_argument("--guesses", type=int, metavar="K",
                    help="guess the K highest and K lowest scores, fixed in advance (default: the best of a fixed "
                         "list of guess counts, Bonferroni-corrected)")
    pa.add_argument("--confidence", type=float, default=0.95, help="confidence of the lower bound (default 0.95)")
    pa.add_argument("--seed", type=int, help="seed of the canaries and coin flips (default: random, recorded)")
    pa.add_argument("--no-power-check", action="store_true",
                    help="skip the DP-off run (then a low ε̂ shows nothing: the report says so)")
    pa.add_argument("--quiet", action="store_true", help="do not stream Flower's log (it is still saved)")
    pa.set_defaults(func=_cmd_privacy_audit)

    d = sub.add_parser("data", help="data utilities")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("synthetic", help="write synthetic triage records (JSONL) to try a node without real data")
    ds.add_argument("--out", required=True, help="JSONL file to write")
    ds.add_argument("--records", type=int, default=300)
    ds.add_argument("--seed", type=int, default=0, help="use a different seed per node")
    ds.add_argument("--force", action="store_true", help="replace an existing file")
    ds.set_defaults(func=_cmd_data_synthetic)

    dc = dsub.add_parser("check", help="validate a data file: counts, labels, token lengths, every bad line")
    dc.add_argument("file", help=".jsonl, .csv, .parquet or a Hugging Face datasets folder")
    dc.add_argument("--format", choices=["chat", "instruction", "prompt-completion", "classification"],
                    help="record format (default: guessed from the fields)")
    dc.add_argument("--text-column", help="classification: column with the text (default: text)")
    dc.add_argument("--label-column", help="column with the label (default: label)")
    dc.add_argument("--labels", help="comma-separated allowed labels; others are reported as unknown")
    dc.add_argument("--group-column", help="column naming each record's group (e.g. hospital id)")
    dc.add_argument("--split", help="datasets folder with several splits: which one (default: train)")
    dc.add_argument("--config", metavar="PRESET", help="read model and [data] settings from this preset / run config")
    dc.add_argument("--no-tokens", action="store_true", help="skip token-length statistics (no tokenizer needed)")
    dc.set_defaults(func=_cmd_data_check)

    c = sub.add_parser("certs", help="create a CA and the SuperLink's TLS certificate (coordinator)")
    c.add_argument("--out", required=True, help="folder for ca.crt, ca.key, server.pem, server.key")
    c.add_argument("--host", action="append", required=True, metavar="NAME_OR_IP",
                   help="a host name or IP nodes use to reach the SuperLink (repeatable; all go into the SANs)")
    c.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    c.add_argument("--force", action="store_true", help="replace existing files")
    c.set_defaults(func=_cmd_certs)

    nk = sub.add_parser("node-key", help="create a node's authentication and signing keys (node operator)")
    nk.add_argument("--out", required=True,
                    help="folder for node-key, node-key.pub, signing-key and NAME.roster-entry")
    nk.add_argument("--name", required=True, help="this node's name, as in its node config's name = ...")
    nk.add_argument("--force", action="store_true", help="replace existing keys")
    nk.set_defaults(func=_cmd_node_key)

    ap = sub.add_parser("app", help="the Flower app a node runs")
    asub = ap.add_subparsers(dest="app_command", required=True)
    ah = asub.add_parser("hash", help="the SHA-256 `flwr run APP_DIR` will send: what a node operator approves")
    ah.add_argument("app_dir", help="the app folder (a clean checkout of the reviewed commit)")
    ah.set_defaults(func=_cmd_app_hash)

    rs = sub.add_parser("roster", help="the federation's roster of node signing keys")
    rsub = rs.add_subparsers(dest="roster_command", required=True)
    rb = rsub.add_parser("build", help="join every node's .roster-entry into one roster file")
    rb.add_argument("--out", required=True, help="the roster file to write (e.g. roster.toml)")
    rb.add_argument("entries", nargs="+", help="the NAME.roster-entry files, one per node")
    rb.add_argument("--force", action="store_true", help="replace an existing roster file")
    rb.set_defaults(func=_cmd_roster_build)

    rt = sub.add_parser("runs", help="finished results folders side by side: accuracy, ε, seconds, and the settings "
                        "that differ between them")
    rt.add_argument("folders", nargs="+", help="results folders (e.g. runs/*)")
    rt.add_argument("--out", help="also write the Markdown table to this file")
    rt.set_defaults(func=_cmd_runs)

    ex = sub.add_parser("export", help="a finished run's adapter (and, with --merged, the merged model) with model "
                        "cards and a SHA-256 manifest")
    ex.add_argument("run_dir", help="the run's results folder")
    ex.add_argument("--out", required=True, help="a new folder to write")
    ex.add_argument("--merged", action="store_true", help="also the base model with the adapter merged in")
    ex.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="weights of the merged model")
    ex.add_argument("--sign", metavar="KEY.pem", help="sign the manifest with this Ed25519 private key (the releaser's)")
    ex.set_defaults(func=_cmd_export)
    ve = sub.add_parser("verify", help="check an exported folder against its MANIFEST.sha256")
    ve.add_argument("folder")
    ve.add_argument("--key", metavar="PUB.pem", help="also check the manifest's signature against this Ed25519 public key")
    ve.set_defaults(func=_cmd_verify)

    cf = sub.add_parser("config", help="the configuration keys")
    cfsub = cf.add_subparsers(dest="config_command", required=True)
    cr = cfsub.add_parser("reference", help="the Markdown reference of every run-config and node-config key, generated "
                          "from their declarations (docs/reference/configuration.md)")
    cr.add_argument("--out", metavar="FILE", help="write it to FILE instead of printing it")
    cr.set_defaults(func=_cmd_config_reference)

    m = sub.add_parser("model", help="model utilities")
    msub = m.add_subparsers(dest="model_command", required=True)
    mp = msub.add_parser("prepare", help="convert/cache a model once (default: the packaged SmolLM2)")
    mp.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    mp.set_defaults(func=_cmd_model_prepare)
    return p


# Errors that are the user's to fix: shown as one line, exit code 2 (module -> class).
USER_ERRORS = {
    "fedtune.common.config": "ConfigError", "fedtune.common.data.errors": "DataError",
    "fedtune.common.files": "FolderBusy", "fedtune.common.model": "ModelError",
    "fedtune.common.secagg.roster": "RosterError", "fedtune.coordinator.certs": "CertError",
    "fedtune.coordinator.checkpoint": "CheckpointError", "fedtune.lab.simulation": "SimulationError",
    "fedtune.lab.runs_table": "RunsError", "fedtune.release.run_files": "ReleaseError",
    "fedtune.node.node_key": "NodeKeyError", "fedtune.node.privacy.ledger": "LedgerError",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("fedtune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, loaded_classes(USER_ERRORS)):
            raise
        print(f"fedtune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
