"""Translates the SAM template into plain CloudFormation, offline, as `sam deploy` would.

cfn-lint alone does not expand SAM resources, so a misspelt property of a SAM event
passes it; the translator rejects it. Usage: sam_translate.py TEMPLATE OUTPUT.json
"""

import json
import os
import sys

import yaml
from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform


class NoManagedPolicies:
    """The template names no AWS managed policy, so none is looked up in IAM."""

    def load(self):
        return {}


def cfn_yaml():
    """A YAML loader that keeps CloudFormation's short tags (!Ref, !Sub, ...) as the
    long forms the translator reads."""

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader, suffix, node):
        name = "Ref" if suffix == "Ref" else "Fn::" + suffix
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if suffix == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    Loader.add_multi_constructor("!", construct)
    return Loader


def main(template_path, output_path):
    # Only the pseudo-parameters' values need a region; no AWS call is made.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(template_path) as f:
        template = yaml.load(f, Loader=cfn_yaml())
    # What `sam deploy` does first: upload each function's local zip and point CodeUri
    # at the S3 copy. Here the zip need not exist yet.
    code = template["Globals"]["Function"]["CodeUri"]
    template["Globals"]["Function"]["CodeUri"] = f"s3://packaged-by-sam-deploy/{os.path.basename(code)}"
    try:
        translated = transform(template, {}, NoManagedPolicies())
    except InvalidDocumentException as e:
        for cause in e.causes:
            print(f"{template_path}: {cause.message}", file=sys.stderr)
        sys.exit(1)
    with open(output_path, "w") as f:
        json.dump(translated, f, indent=1)
    print(f"{template_path}: translated, {len(translated['Resources'])} resources")


if __name__ == "__main__":
    main(*sys.argv[1:])
