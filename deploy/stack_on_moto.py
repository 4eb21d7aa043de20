"""Creates the translated template as a stack on moto's CloudFormation, and checks that
it is wired to itself.

What moto's CloudFormation does not create (the alarms, the bucket policy, the KPI
function's invoke config, the schedule) is created through each service's own API, with
the template's references resolved against the stack's real resources. Then, from what
the services hold (not from the template): every function's environment, the event
source mapping, the schedule's target, every alarm's dimensions and actions, and every
ARN in the roles' policies must name a resource of this stack. A template that names
anything else (a fixed table name, another stack's stream) fails here.

Usage: stack_on_moto.py ENDPOINT TRANSLATED.json STACK_NAME [DEPLOYED.json]
(the function code the template names is a placeholder uploaded here; moto never runs it)

DEPLOYED.json, if named, receives what the functions run with as deployed: each one's
environment, the policies of its role as IAM holds them, and the stack's stream and
bucket (tests/it/lambda_iam.rs runs both functions with exactly that).
"""

import ast
import fnmatch
import io
import json
import sys
import time
import zipfile

import boto3

PSEUDO = {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}
# Dimensions that name no resource: the functions' own EMF dimension.
NOT_RESOURCES = {"function"}


class Stack:
    def __init__(self, endpoint, template, name):
        kw = dict(
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.client = lambda service: boto3.client(service, **kw)
        self.t = template
        self.name = name
        self.params = {k: p.get("Default") for k, p in template.get("Parameters", {}).items()}
        self.physical = {}
        self.arns = {}

    # -- creation -----------------------------------------------------------------------

    def create(self):
        s3 = self.client("s3")
        for r in self.t["Resources"].values():
            code = r.get("Properties", {}).get("Code", {})
            if r["Type"] == "AWS::Lambda::Function" and "S3Bucket" in code:
                try:
                    s3.create_bucket(Bucket=code["S3Bucket"])
                except s3.exceptions.BucketAlreadyOwnedByYou:
                    pass
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w") as z:
                    z.writestr("bootstrap", "#!/bin/sh\n")
                s3.put_object(Bucket=code["S3Bucket"], Key=code["S3Key"], Body=buf.getvalue())
        cfn = self.client("cloudformation")
        cfn.create_stack(StackName=self.name, TemplateBody=json.dumps(self.t), Capabilities=["CAPABILITY_IAM"])
        for _ in range(120):
            stack = cfn.describe_stacks(StackName=self.name)["Stacks"][0]
            if not stack["StackStatus"].endswith("IN_PROGRESS"):
                break
            time.sleep(0.5)
        if stack["StackStatus"] != "CREATE_COMPLETE":
            sys.exit(f"stack {self.name}: {stack['StackStatus']} {stack.get('StackStatusReason', '')}")
        for r in cfn.list_stack_resources(StackName=self.name)["StackResourceSummaries"]:
            if r["LogicalResourceId"] in self.t["Resources"]:
                self.physical[r["LogicalResourceId"]] = r["PhysicalResourceId"]
        for logical, physical in self.physical.items():
            self.arns[logical] = self.arn_of(self.t["Resources"][logical]["Type"], physical)

    def arn_of(self, kind, physical):
        account = PSEUDO["AWS::AccountId"]
        return {
            "AWS::Kinesis::Stream": f"arn:aws:kinesis:us-east-1:{account}:stream/{physical}",
            "AWS::DynamoDB::Table": f"arn:aws:dynamodb:us-east-1:{account}:table/{physical}",
            "AWS::S3::Bucket": f"arn:aws:s3:::{physical}",
            "AWS::SQS::Queue": f"arn:aws:sqs:us-east-1:{account}:{physical.rsplit('/', 1)[-1]}",
            "AWS::SNS::Topic": physical,
            "AWS::Lambda::Function": f"arn:aws:lambda:us-east-1:{account}:function:{physical}",
            "AWS::IAM::Role": f"arn:aws:iam::{account}:role/{physical}",
            "AWS::Logs::LogGroup": f"arn:aws:logs:us-east-1:{account}:log-group:{physical}",
        }.get(kind, physical)

    def resolve(self, v):
        """The template's value `v` with its intrinsic functions evaluated in this stack."""
        if isinstance(v, list):
            return [self.resolve(x) for x in v]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (fn, arg), = v.items()
            if fn == "Ref":
                if arg == "AWS::StackName":
                    return self.name
                if arg in PSEUDO:
                    return PSEUDO[arg]
                if arg in self.params:
                    return self.params[arg]
                return self.physical[arg]
            if fn == "Fn::GetAtt":
                logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                if attr == "Arn":
                    return self.arns[logical]
                if attr == "QueueName":
                    return self.physical[logical].rsplit("/", 1)[-1]
                raise ValueError(f"GetAtt {logical}.{attr}")
            if fn == "Fn::Sub":
                text, names = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                out, rest = "", text
                while "${" in rest:
                    before, _, after = rest.partition("${")
                    ref, _, rest = after.partition("}")
                    if ref in names:
                        value = self.resolve(names[ref])
                    elif "." in ref:
                        value = self.resolve({"Fn::GetAtt": ref.split(".", 1)})
                    else:
                        value = self.resolve({"Ref": ref})
                    out += before + str(value)
                return out + rest
            if fn == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(cond) else no)
            if fn == "Fn::Join":
                return arg[0].join(str(self.resolve(x)) for x in arg[1])
        return {k: self.resolve(x) for k, x in v.items()}

    def condition(self, name):
        def ev(c):
            (fn, arg), = c.items()
            if fn == "Fn::Not":
                return not ev(arg[0])
            if fn == "Fn::Equals":
                return self.resolve(arg[0]) == self.resolve(arg[1])
            if fn == "Condition":
                return self.condition(arg)
            raise ValueError(fn)

        return ev(self.t["Conditions"][name])

    def create_what_moto_skips(self):
        """The alarms, the bucket policy, the invoke config and the schedule, through
        their services, as CloudFormation would make them."""
        for logical, r in self.t["Resources"].items():
            if logical in self.physical or ("Condition" in r and not self.condition(r["Condition"])):
                continue
            p = self.resolve(r.get("Properties", {}))
            kind = r["Type"]
            if kind == "AWS::CloudWatch::Alarm":
                p["AlarmName"] = f"{self.name}-{logical}"
                for m in p.get("Metrics", []):
                    stat = m.get("MetricStat")
                    if stat:
                        stat["Metric"]["Dimensions"] = stat["Metric"].get("Dimensions", [])
                p.pop("AlarmDescription", None)
                self.client("cloudwatch").put_metric_alarm(**coerce_numbers(p))
                self.physical[logical] = p["AlarmName"]
            elif kind == "AWS::S3::BucketPolicy":
                self.client("s3").put_bucket_policy(Bucket=p["Bucket"], Policy=json.dumps(p["PolicyDocument"]))
                self.physical[logical] = p["Bucket"]
            elif kind == "AWS::Lambda::EventInvokeConfig":
                self.client("lambda").put_function_event_invoke_config(
                    FunctionName=p["FunctionName"],
                    Qualifier=p.get("Qualifier", "$LATEST"),
                    MaximumRetryAttempts=int(p["MaximumRetryAttempts"]),
                    DestinationConfig=p["DestinationConfig"],
                )
                self.physical[logical] = p["FunctionName"]
            elif kind == "AWS::Scheduler::Schedule":
                name = p.get("Name", f"{self.name}-{logical}")
                self.client("scheduler").create_schedule(
                    Name=name,
                    ScheduleExpression=p["ScheduleExpression"],
                    ScheduleExpressionTimezone=p.get("ScheduleExpressionTimezone", "UTC"),
                    FlexibleTimeWindow=p["FlexibleTimeWindow"],
                    Target=coerce_numbers(p["Target"]),
                    State=p.get("State", "ENABLED"),
                )
                self.physical[logical] = name
            else:
                sys.exit(f"{logical} ({kind}) was not created, and this script cannot create it")

    def deployed(self):
        """What each function runs with, as the services hold it."""
        lam, iam = self.client("lambda"), self.client("iam")
        out = {"stack": self.name, "functions": {}}
        for logical, r in self.t["Resources"].items():
            kind = r["Type"]
            if kind == "AWS::Lambda::Function":
                f = lam.get_function_configuration(FunctionName=self.physical[logical])
                role = f["Role"].rsplit("/", 1)[-1]
                policies = []
                for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                    policies.append([name, policy_document(iam.get_role_policy(RoleName=role, PolicyName=name))])
                env = {k: str(v) for k, v in f.get("Environment", {}).get("Variables", {}).items()}
                out["functions"][logical] = {"name": f["FunctionName"], "env": env, "policies": policies}
            elif kind == "AWS::Kinesis::Stream":
                out["stream"], out["stream_arn"] = self.physical[logical], self.arns[logical]
            elif kind == "AWS::S3::Bucket":
                out["bucket"] = self.physical[logical]
        return out

    # -- checks ---------------------------------------------------------------------------

    def check(self):
        """What each service holds names this stack's resources: a list of problems."""
        problems = []
        names = set(self.physical.values()) | {p.rsplit("/", 1)[-1] for p in self.physical.values()}
        arns = set(self.arns.values())

        def own_arn(arn, where):
            if arn not in arns:
                problems.append(f"{where}: {arn} is no resource of stack {self.name}")

        lam = self.client("lambda")
        functions = [f for f in lam.list_functions()["Functions"] if f["FunctionArn"] in arns]
        if len(functions) != sum(r["Type"] == "AWS::Lambda::Function" for r in self.t["Resources"].values()):
            problems.append(f"the stack's functions: {[f['FunctionName'] for f in functions]}")
        for f in functions:
            for var, value in f.get("Environment", {}).get("Variables", {}).items():
                value = str(value)
                where = f"{f['FunctionName']} {var}={value}"
                if var == "TRIPFLOW_STACK" and value != self.name:
                    problems.append(f"{where}: not the stack's name")
                for scheme in ("dynamodb://", "s3://", "kinesis://"):
                    if value.startswith(scheme):
                        resource = value[len(scheme):].split("/", 1)[0]
                        if resource not in names:
                            problems.append(f"{where}: {resource} is no resource of stack {self.name}")
            own_arn(f["Role"], f"{f['FunctionName']} role")
        for m in lam.list_event_source_mappings()["EventSourceMappings"]:
            if m["FunctionArn"] not in arns:
                continue
            own_arn(m["EventSourceArn"], "event source mapping's source")
            for d in m.get("DestinationConfig", {}).values():
                own_arn(d["Destination"], "event source mapping's on-failure destination")
            if not m.get("MetricsConfig"):
                problems.append("the event source mapping has no MetricsConfig")
        for logical, r in self.t["Resources"].items():
            if r["Type"] == "AWS::Lambda::EventInvokeConfig":
                config = lam.get_function_event_invoke_config(FunctionName=self.physical[logical])
                for d in config.get("DestinationConfig", {}).values():
                    own_arn(d["Destination"], f"{logical}'s on-failure destination")
        scheduler = self.client("scheduler")
        schedules = [s for s in scheduler.list_schedules()["Schedules"] if s["Name"].startswith(self.name)]
        if len(schedules) != sum(r["Type"] == "AWS::Scheduler::Schedule" for r in self.t["Resources"].values()):
            problems.append(f"the stack's schedules: {[s['Name'] for s in schedules]}")
        for s in schedules:
            target = scheduler.get_schedule(Name=s["Name"])["Target"]
            own_arn(target["Arn"], f"schedule {s['Name']}'s target")
            own_arn(target["RoleArn"], f"schedule {s['Name']}'s role")
            if "DeadLetterConfig" in target:
                own_arn(target["DeadLetterConfig"]["Arn"], f"schedule {s['Name']}'s dead-letter queue")
        alarms = self.client("cloudwatch").describe_alarms(AlarmNamePrefix=f"{self.name}-")["MetricAlarms"]
        expected = sum(r["Type"] == "AWS::CloudWatch::Alarm" for r in self.t["Resources"].values())
        if len(alarms) != expected:
            problems.append(f"{len(alarms)} alarms, not {expected}")
        for a in alarms:
            dims = list(a.get("Dimensions", []))
            for m in a.get("Metrics", []):
                dims += m.get("MetricStat", {}).get("Metric", {}).get("Dimensions", [])
            for d in dims:
                where = f"alarm {a['AlarmName']} dimension {d['Name']}={d['Value']}"
                if d["Name"] == "stack":
                    if d["Value"] != self.name:
                        problems.append(f"{where}: not the stack's name")
                elif d["Name"] == "GlobalSecondaryIndexName":
                    indexes = {
                        i["IndexName"]
                        for logical, r in self.t["Resources"].items()
                        if r["Type"] == "AWS::DynamoDB::Table"
                        for i in self.client("dynamodb")
                        .describe_table(TableName=self.physical[logical])["Table"]
                        .get("GlobalSecondaryIndexes", [])
                    }
                    if d["Value"] not in indexes:
                        problems.append(f"{where}: no index of the stack's tables")
                elif d["Name"] not in NOT_RESOURCES and d["Value"] not in names:
                    problems.append(f"{where}: no resource of stack {self.name}")
            for arn in a.get("AlarmActions", []) + a.get("OKActions", []):
                own_arn(arn, f"alarm {a['AlarmName']}'s action")
        iam = self.client("iam")
        for logical, r in self.t["Resources"].items():
            if r["Type"] != "AWS::IAM::Role":
                continue
            role = self.physical[logical]
            for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                doc = policy_document(iam.get_role_policy(RoleName=role, PolicyName=policy))
                for s in doc["Statement"]:
                    resources = s.get("Resource", [])
                    for arn in [resources] if isinstance(resources, str) else resources:
                        if not any(fnmatch.fnmatchcase(own, arn) or arn.startswith(own) for own in arns):
                            problems.append(f"role {logical} ({s.get('Sid', '')}): {arn} names no resource of the stack")
        return problems


def policy_document(answer):
    doc = answer["PolicyDocument"]
    if isinstance(doc, str):
        # moto's CloudFormation stores an inline policy as Python's repr of it.
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError:
            doc = ast.literal_eval(doc)
    return doc


def coerce_numbers(p):
    """CloudFormation takes numbers as strings; the APIs take numbers."""
    numeric = {"Period", "EvaluationPeriods", "DatapointsToAlarm", "Threshold", "MaximumRetryAttempts",
               "MaximumEventAgeInSeconds"}
    if isinstance(p, dict):
        return {k: (float(v) if k == "Threshold" else int(v)) if k in numeric and isinstance(v, str)
                else coerce_numbers(v) for k, v in p.items()}
    if isinstance(p, list):
        return [coerce_numbers(x) for x in p]
    return p


def main():
    endpoint, translated, name = sys.argv[1:4]
    out = sys.argv[4] if len(sys.argv) > 4 else None
    stack = Stack(endpoint, json.load(open(translated)), name)
    stack.create()
    stack.create_what_moto_skips()
    problems = stack.check()
    if problems:
        sys.exit(f"stack {name} is not wired to itself:\n  " + "\n  ".join(problems))
    print(f"stack {name}: {len(stack.physical)} resources, each reference names one of them")
    if out:
        with open(out, "w") as f:
            json.dump(stack.deployed(), f, indent=1)


if __name__ == "__main__":
    main()
