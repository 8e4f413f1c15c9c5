"""Vocabulary the heuristic parser reads goals with: domain terms, technologies, file types.

Tables are written as compact `term:weight` strings (an underscore stands for a space) so that
they stay readable and easy to extend.
"""

from __future__ import annotations

from typing import Literal

Domain = Literal["code", "security", "data", "infrastructure", "general"]


def weights(table: str) -> dict[str, float]:
    """`"unit_test:2 bug:1.5"` -> `{"unit test": 2.0, "bug": 1.5}`."""
    pairs = (item.rsplit(":", 1) for item in table.split())
    return {term.replace("_", " "): float(weight) for term, weight in pairs}


def names(table: str) -> frozenset[str]:
    """Whitespace-separated names as a set."""
    return frozenset(table.split())


DOMAIN_TERMS: dict[Domain, dict[str, float]] = {
    "code": weights(
        """code:2 coding:2 function:2 functions:2 method:1 class:1 bug:2 bugs:2 fix:1 debug:3
        implement:2 implementation:2 refactor:3 compile:2 compiler:2 script:2 program:2
        library:1 api:1 endpoint:1 unit_test:2 unit_tests:2 tests:1 test:1 exception:2
        stack_trace:3 traceback:3 repository:1 pull_request:2 module:1 algorithm:2 regex:2
        lint:2 type_hints:2 crash:1"""
    ),
    "security": weights(
        """security:3 secure:2 vulnerability:3 vulnerabilities:3 exploit:3 cve:3 attack:2
        threat:2 malware:3 phishing:3 xss:3 csrf:3 sql_injection:4 injection:2 pentest:3
        penetration:3 audit:2 password:2 passwords:2 secret:2 secrets:2 credential:2
        credentials:2 encryption:2 encrypt:2 tls:1 certificate:1 authentication:1.5
        authorization:1.5 permissions:1 firewall:2 pii:3 redact:2 leak:2 breach:3
        compliance:1.5 owasp:3"""
    ),
    "data": weights(
        """data:2 dataset:3 datasets:3 csv:3 sql:2 query:1 queries:1 database:1.5 table:1
        tables:1 analyze:1.5 analyse:1.5 analysis:1.5 statistics:2 statistical:2 chart:2
        plot:2 visualize:2 visualization:2 etl:3 aggregate:2 report:1 spreadsheet:3 schema:1
        records:1 rows:1 columns:1 metrics:1 correlation:3 regression:2 forecast:2 trend:1.5
        trends:1.5 warehouse:2 dashboard:1.5 transform:1"""
    ),
    "infrastructure": weights(
        """infrastructure:3 deploy:2.5 deployment:2.5 deploying:2.5 cluster:2 container:2
        containers:2 server:1 servers:1 ci/cd:3 ci:1 load_balancer:3 dns:2 network:1
        networking:1.5 scale:1.5 scaling:1.5 autoscaling:3 monitoring:1.5 alerting:2
        rollout:2.5 rollback:2 provision:3 provisioning:3 vm:2 vms:2 uptime:2 latency:1 mesh:1
        ingress:3 pod:2 pods:2 node_pool:3 backup:1.5 disaster_recovery:3 helm_chart:3
        outage:2"""
    ),
}

# Canonical name -> (spellings, the domain it leans to or None).
TECHNOLOGIES: dict[str, tuple[tuple[str, ...], Domain | None]] = {
    "Python": (("python", "python3"), "code"),
    "JavaScript": (("javascript",), "code"),
    "TypeScript": (("typescript",), "code"),
    "Go": (("golang",), "code"),
    "Rust": (("rust",), "code"),
    "Java": (("java",), "code"),
    "Kotlin": (("kotlin",), "code"),
    "C++": (("c++", "cpp"), "code"),
    "C#": (("c#", "csharp"), "code"),
    "Ruby": (("ruby",), "code"),
    "PHP": (("php",), "code"),
    "Node.js": (("node.js", "nodejs"), "code"),
    "React": (("react",), "code"),
    "Django": (("django",), "code"),
    "Flask": (("flask",), "code"),
    "FastAPI": (("fastapi",), "code"),
    "asyncio": (("asyncio",), "code"),
    "pytest": (("pytest",), "code"),
    "gRPC": (("grpc",), "code"),
    "protobuf": (("protobuf", "protocol buffers"), "code"),
    "GraphQL": (("graphql",), "code"),
    "Git": (("git",), "code"),
    "GitHub": (("github",), "code"),
    "SQL": (("sql",), "data"),
    "PostgreSQL": (("postgresql", "postgres"), "data"),
    "MySQL": (("mysql",), "data"),
    "SQLite": (("sqlite",), "data"),
    "MongoDB": (("mongodb",), "data"),
    "Redis": (("redis",), None),
    "Elasticsearch": (("elasticsearch",), "data"),
    "Qdrant": (("qdrant",), "data"),
    "Kafka": (("kafka",), "data"),
    "Spark": (("spark", "pyspark"), "data"),
    "Airflow": (("airflow",), "data"),
    "pandas": (("pandas",), "data"),
    "NumPy": (("numpy",), "data"),
    "PyTorch": (("pytorch",), "data"),
    "TensorFlow": (("tensorflow",), "data"),
    "CSV": (("csv",), "data"),
    "JSON": (("json",), None),
    "YAML": (("yaml",), None),
    "Docker": (("docker", "dockerfile"), "infrastructure"),
    "Kubernetes": (("kubernetes", "k8s", "kubectl"), "infrastructure"),
    "Helm": (("helm",), "infrastructure"),
    "Terraform": (("terraform",), "infrastructure"),
    "Ansible": (("ansible",), "infrastructure"),
    "AWS": (("aws",), "infrastructure"),
    "S3": (("s3",), "infrastructure"),
    "GCP": (("gcp", "google cloud"), "infrastructure"),
    "Azure": (("azure",), "infrastructure"),
    "Nginx": (("nginx",), "infrastructure"),
    "Linux": (("linux",), "infrastructure"),
    "Prometheus": (("prometheus",), "infrastructure"),
    "Grafana": (("grafana",), "infrastructure"),
    "Linkerd": (("linkerd",), "infrastructure"),
    "Istio": (("istio",), "infrastructure"),
    "OAuth": (("oauth", "oauth2"), "security"),
    "JWT": (("jwt",), "security"),
    "OpenSSL": (("openssl",), "security"),
    "OpenAI": (("openai",), None),
    "Ollama": (("ollama",), None),
    "vLLM": (("vllm",), None),
    "llama.cpp": (("llama.cpp",), None),
}

EXTENSION_TECH: dict[str, str] = {
    **dict.fromkeys(("py", "pyi", "ipynb"), "Python"),
    **dict.fromkeys(("js", "jsx", "mjs"), "JavaScript"),
    **dict.fromkeys(("ts", "tsx"), "TypeScript"),
    **dict.fromkeys(("cpp", "cc", "hpp"), "C++"),
    **dict.fromkeys(("yaml", "yml"), "YAML"),
    "go": "Go",
    "rs": "Rust",
    "java": "Java",
    "kt": "Kotlin",
    "cs": "C#",
    "rb": "Ruby",
    "php": "PHP",
    "sql": "SQL",
    "csv": "CSV",
    "tf": "Terraform",
    "proto": "protobuf",
    "json": "JSON",
}

EXTENSION_DOMAIN: dict[str, Domain] = {
    **dict.fromkeys(
        names("py pyi js jsx mjs ts tsx go rs java kt cpp cc c h hpp cs rb php swift proto"),
        "code",
    ),
    **dict.fromkeys(names("csv sql parquet ipynb xlsx"), "data"),
    **dict.fromkeys(names("tf hcl"), "infrastructure"),
}

FILE_EXTENSIONS = names(
    """py pyi ipynb js jsx mjs ts tsx go rs java kt rb php c h cc cpp hpp cs swift scala sql json
    yaml yml toml ini cfg conf md rst txt csv parquet xlsx sh bash ps1 tf hcl proto html css xml
    lock env log"""
)

# Words that announce another step, with how strongly.
SEQUENCE_WORDS = weights(
    """then:1 after:0.75 afterwards:1 before:0.5 finally:1 next:0.75 also:0.5 and:0.5 plus:0.5
    first:0.5 second:0.5 third:0.75 lastly:1 additionally:1 steps:0.5 each:0.5"""
)

ACTION_VERBS = names(
    """add analyze analyse audit benchmark build check clean compare configure convert create
    debug deploy design document draft evaluate extract find fix generate implement improve
    ingest install integrate investigate load measure migrate monitor optimize optimise parse
    plan profile provision publish refactor remove rename replace report research review rewrite
    run scan scale search secure set setup summarize summarise test train transform translate
    update upgrade validate verify visualize write rotate plot chart upload download send merge
    split sort filter fetch compute calculate count list rank classify label index store save
    archive backup restore revert patch release ship launch explain describe compile package
    containerize migrate port translate"""
)
