r"""The converter as an Apache Beam pipeline, for archives that outgrow one machine.

  python -m data_pipelines.beam_convert --format=wfdb --input=gs://bucket/raw \
      --output=gs://bucket/shards --num_shards=1024 -- --runner=DataflowRunner ...

Same code path as ``data_pipelines.convert``: Beam only distributes the shard groups
(``convert.convert_group``: read -> validate -> R-peaks -> encode -> write shard + index +
done marker) and the merge into spec.json is ``convert``'s own, so the shards are
byte-identical to the local converter's for the same arguments. DirectRunner in tests; any
runner (Dataflow, Flink, Spark) that can reach ``--input``/``--output`` works; ``--output``
may be a bucket, which each worker writes its groups' objects to (see ``convert``).
Needs ``pip install 'ecgjax[beam]'``.
"""
from __future__ import annotations

import argparse
import json
import sys

from data_pipelines import convert
from ecgjax import cli
from ecgjax.data import spec as spec_lib


def run(args: argparse.Namespace, beam_argv: list[str]) -> dict:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top

  reader, groups, label_encoding, num_classes = convert.plan(args)

  def convert_one(group: int) -> str:
    return json.dumps(convert.convert_group(reader, groups[group], group, args,
                                            label_encoding, num_classes))

  with beam.Pipeline(options=PipelineOptions(beam_argv)) as p:
    summaries = (p
                 | "Groups" >> beam.Create(list(range(len(groups))))
                 | "Reshuffle" >> beam.Reshuffle()
                 | "Convert" >> beam.Map(convert_one)
                 | "Collect" >> beam.combiners.ToList())
    summaries | "WriteSpec" >> beam.Map(write_spec, reader, args, label_encoding)
  if not spec_lib.exists(args.output):
    raise cli.EmptyOutputError(f"0 of {sum(len(g) for g in groups)} records converted; no "
                               f"spec.json written, see {args.output}/rejects.jsonl")
  return spec_lib.load(args.output)


def write_spec(rows: list[str], reader, args: argparse.Namespace, label_encoding: str) -> None:
  """Merges the group summaries into spec.json, unless no record was converted."""
  spec = convert.merge([json.loads(r) for r in rows], reader, args, label_encoding)
  if spec["num_records"]:
    spec["warnings"] = convert.amplitude_warnings(spec)
    spec_lib.write(args.output, spec)


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  ours, beam_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
  args = convert.build_parser().parse_args(ours)
  cli.setup_logging()
  spec = cli.run("beam_convert", lambda: run(args, beam_argv), args.verbose)
  print(json.dumps({"records": spec["num_records"], "splits": spec["splits"],
                    "rejects": spec["rejects"]}, indent=1))


if __name__ == "__main__":
  main()
