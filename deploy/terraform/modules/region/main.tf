# One region: N servers, each an instance running the app and `tether proxy`
# beside it, with its own DNS name (the locked-server URL), a Route 53 health
# check on /healthz, a multivalue record under <name>.<domain>, and this
# region's geoproximity record of the global name.
#
# Every regional resource sets `region` (AWS provider >= 6), so the root
# module creates all regions from one map with for_each.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  server_ids   = [for i in range(var.servers) : "${var.name}-${i + 1}"]
  server_fqdns = [for id in local.server_ids : "${id}.${var.domain}"]
  region_fqdn  = "${var.name}.${var.domain}"
  global_fqdn  = "${var.global_name}.${var.domain}"
  monitoring   = distinct(concat([var.vpc_cidr], var.monitoring_cidrs))
  param_prefix = "/tether/${var.name}"
  arn_prefix   = "arn:${data.aws_partition.current.partition}"
  account      = data.aws_caller_identity.current.account_id
  tags         = merge(var.tags, { "tether:region" = var.name })
}

# ---- network ----------------------------------------------------------------

resource "aws_security_group" "server" {
  region      = var.aws_region
  name        = "tether-${var.name}-server"
  description = "tether ${var.name}: public client port, private admin port"
  vpc_id      = var.vpc_id

  ingress {
    description      = "clients and Route 53 health checkers (HTTPS, /healthz)"
    from_port        = var.client_port
    to_port          = var.client_port
    protocol         = "tcp"
    cidr_blocks      = ["0.0.0.0/0"]
    ipv6_cidr_blocks = ["::/0"]
  }

  ingress {
    description = "admin listener (/metrics, /healthz, /registry): private monitoring only"
    from_port   = var.admin_port
    to_port     = var.admin_port
    protocol    = "tcp"
    cidr_blocks = local.monitoring
  }

  egress {
    description = "HTTPS: AWS APIs (SSM, Secrets Manager), /healthz probes of peers and forward hops"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "discovery nodes (heartbeats, registry long-polls)"
    from_port   = var.discovery_port
    to_port     = var.discovery_port
    protocol    = "tcp"
    cidr_blocks = var.discovery_cidrs
  }

  tags = merge(local.tags, { Name = "tether-${var.name}-server" })
}

# ---- config and secrets delivered at boot -------------------------------------

# The proxy config of each server, rendered here (no secret in it: the key
# ring, cluster token and TLS key are fetched from Secrets Manager at boot).
resource "aws_ssm_parameter" "proxy_config" {
  count  = var.servers
  region = var.aws_region
  name   = "${local.param_prefix}/${local.server_ids[count.index]}/proxy.toml"
  type   = "SecureString"
  key_id = var.kms_key_arn
  tier   = "Standard"
  value = templatefile("${path.module}/templates/proxy.toml.tftpl", {
    server_id           = local.server_ids[count.index]
    region              = var.name
    public_url          = "https://${local.server_fqdns[count.index]}"
    client_port         = var.client_port
    admin_port          = var.admin_port
    app_port            = var.app_port
    app_health_path     = var.app_health_path
    discovery_urls      = var.discovery_urls
    issuer              = var.tokens.issuer
    audience            = var.tokens.audience
    login_path          = var.login.upstream_path
    subject_pointer     = var.login.subject_pointer
    home_region_pointer = var.login.home_region_pointer
  })
  tags = local.tags
}

# ---- instances ---------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "server" {
  name               = "tether-${var.name}-server"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "server" {
  statement {
    sid       = "ReadOwnConfig"
    actions   = ["ssm:GetParameter"]
    resources = ["${local.arn_prefix}:ssm:${var.aws_region}:${local.account}:parameter${local.param_prefix}/*"]
  }
  statement {
    sid     = "ReadSecrets"
    actions = ["secretsmanager:GetSecretValue"]
    # Secrets Manager appends a random suffix to each ARN.
    resources = [for n in values(var.secret_names) : "${local.arn_prefix}:secretsmanager:${var.aws_region}:${local.account}:secret:${n}-*"]
  }
  statement {
    sid       = "DecryptThem"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "server" {
  name   = "tether-${var.name}-server"
  role   = aws_iam_role.server.id
  policy = data.aws_iam_policy_document.server.json
}

# Shell access through SSM Session Manager: no SSH port anywhere.
resource "aws_iam_role_policy_attachment" "ssm_core" {
  role       = aws_iam_role.server.name
  policy_arn = "${local.arn_prefix}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "server" {
  name = "tether-${var.name}-server"
  role = aws_iam_role.server.name
  tags = local.tags
}

resource "aws_instance" "server" {
  #checkov:skip=CKV_AWS_88:the servers are reached directly by clients at their own name (the locked-server URL); only the client port is open (security group above)
  count                       = var.servers
  region                      = var.aws_region
  ami                         = var.ami_id
  instance_type               = var.instance_type
  subnet_id                   = element(var.public_subnet_ids, count.index)
  vpc_security_group_ids      = [aws_security_group.server.id]
  iam_instance_profile        = aws_iam_instance_profile.server.name
  associate_public_ip_address = true
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_tokens                 = "required"
    http_endpoint               = "enabled"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = 20
  }

  user_data = templatefile("${path.module}/templates/user-data.sh.tftpl", {
    aws_region       = var.aws_region
    config_parameter = aws_ssm_parameter.proxy_config[count.index].name
    keyring_secret   = var.secret_names.keyring
    cluster_secret   = var.secret_names.cluster_token
    tls_cert_secret  = var.secret_names.tls_cert
    tls_key_secret   = var.secret_names.tls_key
    app_service      = var.app_service
  })
  user_data_replace_on_change = true

  tags = merge(local.tags, {
    Name            = local.server_ids[count.index]
    "tether:server" = local.server_ids[count.index]
  })
}

# A stable public address per server: its DNS name must not change when
# the instance is replaced.
resource "aws_eip" "server" {
  count    = var.servers
  region   = var.aws_region
  domain   = "vpc"
  instance = aws_instance.server[count.index].id
  tags     = merge(local.tags, { Name = local.server_ids[count.index] })
}

# ---- DNS --------------------------------------------------------------------

# The locked-server URL: https://<name>-<n>.<domain>. No health check on
# purpose: a locked client must reach exactly this server or learn, from
# the failed request, to refresh.
resource "aws_route53_record" "server" {
  count   = var.servers
  zone_id = var.zone_id
  name    = local.server_fqdns[count.index]
  type    = "A"
  ttl     = var.dns_ttl
  records = [aws_eip.server[count.index].public_ip]
}

# One health check per server on the proxy's /healthz (200 = an upstream
# is healthy), through the public client port like a client.
resource "aws_route53_health_check" "server" {
  count             = var.servers
  type              = "HTTPS"
  ip_address        = aws_eip.server[count.index].public_ip
  fqdn              = local.server_fqdns[count.index]
  port              = var.client_port
  resource_path     = "/healthz"
  request_interval  = var.health_check_interval
  failure_threshold = var.health_check_failure_threshold
  measure_latency   = true
  tags              = merge(local.tags, { Name = "tether-${local.server_ids[count.index]}" })
}

# <name>.<domain>: every healthy server of the region (multivalue answer,
# each record tied to its server's health check).
resource "aws_route53_record" "region" {
  count                            = var.servers
  zone_id                          = var.zone_id
  name                             = local.region_fqdn
  type                             = "A"
  ttl                              = var.dns_ttl
  set_identifier                   = local.server_ids[count.index]
  multivalue_answer_routing_policy = true
  health_check_id                  = aws_route53_health_check.server[count.index].id
  records                          = [aws_eip.server[count.index].public_ip]
}

# The region is healthy while at least one of its servers is.
resource "aws_route53_health_check" "region" {
  type                   = "CALCULATED"
  child_healthchecks     = aws_route53_health_check.server[*].id
  child_health_threshold = 1
  tags                   = merge(local.tags, { Name = "tether-${var.name}" })
}

# The global name: this region's geoproximity record, tied to the region's
# health, so Route 53 answers with the nearest region that has a healthy
# server.
resource "aws_route53_record" "global" {
  zone_id         = var.zone_id
  name            = local.global_fqdn
  type            = "CNAME"
  ttl             = var.dns_ttl
  set_identifier  = var.name
  health_check_id = aws_route53_health_check.region.id
  records         = [local.region_fqdn]

  geoproximity_routing_policy {
    aws_region = var.aws_region
    bias       = var.geo_bias
  }
}
