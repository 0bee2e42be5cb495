# The discovery tier: an etcd cluster (etcd_members, 3 by default) and
# stateless discovery nodes over it (discovery_nodes, 2 by default), all in
# private subnets, reachable from the regions' VPCs only (peering or a
# transit gateway, outside this module) under names in a private zone:
# etcd-N.<zone> and discovery-N.<zone>.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  etcd_names      = [for i in range(var.etcd_members) : "etcd-${i + 1}"]
  discovery_names = [for i in range(var.discovery_nodes) : "discovery-${i + 1}"]
  etcd_endpoints  = [for n in local.etcd_names : "http://${n}.${var.private_zone_name}:2379"]
  etcd_cluster    = join(",", [for n in local.etcd_names : "${n}=http://${n}.${var.private_zone_name}:2380"])
  discovery_urls  = [for n in local.discovery_names : "http://${n}.${var.private_zone_name}:${var.discovery_port}"]
  param_prefix    = "/tether/discovery"
  arn_prefix      = "arn:${data.aws_partition.current.partition}"
  account         = data.aws_caller_identity.current.account_id
  tags            = merge(var.tags, { "tether:tier" = "discovery" })
}

# ---- network ----------------------------------------------------------------

resource "aws_security_group" "discovery" {
  region      = var.aws_region
  name        = "tether-discovery"
  description = "tether discovery nodes: heartbeats and registry polls from the regions"
  vpc_id      = var.vpc_id

  ingress {
    description = "proxies (heartbeats, GET /v1/servers) and monitoring (/metrics)"
    from_port   = var.discovery_port
    to_port     = var.discovery_port
    protocol    = "tcp"
    cidr_blocks = var.client_cidrs
  }

  egress {
    description = "etcd client port"
    from_port   = 2379
    to_port     = 2379
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  egress {
    description = "HTTPS to AWS APIs (SSM, Secrets Manager) through NAT or VPC endpoints"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = merge(local.tags, { Name = "tether-discovery" })
}

resource "aws_security_group" "etcd" {
  region      = var.aws_region
  name        = "tether-etcd"
  description = "tether etcd members: clients are the discovery nodes, peers each other"
  vpc_id      = var.vpc_id

  ingress {
    description     = "etcd clients: the discovery nodes only"
    from_port       = 2379
    to_port         = 2379
    protocol        = "tcp"
    security_groups = [aws_security_group.discovery.id]
  }

  ingress {
    description = "etcd peers"
    from_port   = 2380
    to_port     = 2380
    protocol    = "tcp"
    self        = true
  }

  egress {
    description = "etcd peers"
    from_port   = 2380
    to_port     = 2380
    protocol    = "tcp"
    self        = true
  }

  egress {
    description = "HTTPS to AWS APIs (SSM) through NAT or VPC endpoints"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = merge(local.tags, { Name = "tether-etcd" })
}

# ---- roles --------------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "discovery" {
  name               = "tether-discovery"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "discovery" {
  statement {
    sid       = "ReadOwnConfig"
    actions   = ["ssm:GetParameter"]
    resources = ["${local.arn_prefix}:ssm:${var.aws_region}:${local.account}:parameter${local.param_prefix}/*"]
  }
  statement {
    sid       = "ReadTokens"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [for n in values(var.secret_names) : "${local.arn_prefix}:secretsmanager:${var.aws_region}:${local.account}:secret:${n}-*"]
  }
  statement {
    sid       = "DecryptThem"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "discovery" {
  name   = "tether-discovery"
  role   = aws_iam_role.discovery.id
  policy = data.aws_iam_policy_document.discovery.json
}

resource "aws_iam_role" "etcd" {
  name               = "tether-etcd"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "ssm_core" {
  for_each   = { discovery = aws_iam_role.discovery.name, etcd = aws_iam_role.etcd.name }
  role       = each.value
  policy_arn = "${local.arn_prefix}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "discovery" {
  name = "tether-discovery"
  role = aws_iam_role.discovery.name
  tags = local.tags
}

resource "aws_iam_instance_profile" "etcd" {
  name = "tether-etcd"
  role = aws_iam_role.etcd.name
  tags = local.tags
}

# ---- etcd members ---------------------------------------------------------------

resource "aws_instance" "etcd" {
  count                  = var.etcd_members
  region                 = var.aws_region
  ami                    = var.etcd_ami_id
  instance_type          = var.instance_type
  subnet_id              = element(var.private_subnet_ids, count.index)
  vpc_security_group_ids = [aws_security_group.etcd.id]
  iam_instance_profile   = aws_iam_instance_profile.etcd.name
  monitoring             = true
  ebs_optimized          = true

  metadata_options {
    http_tokens                 = "required"
    http_endpoint               = "enabled"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = 40
  }

  user_data = templatefile("${path.module}/templates/etcd-user-data.sh.tftpl", {
    name            = local.etcd_names[count.index]
    zone            = var.private_zone_name
    initial_cluster = local.etcd_cluster
  })

  # Members are replaced one at a time with etcdctl member remove/add, not
  # by Terraform re-creating them from user-data.
  lifecycle {
    ignore_changes = [user_data, ami]
  }

  tags = merge(local.tags, { Name = "tether-${local.etcd_names[count.index]}" })
}

resource "aws_route53_record" "etcd" {
  count   = var.etcd_members
  zone_id = var.private_zone_id
  name    = "${local.etcd_names[count.index]}.${var.private_zone_name}"
  type    = "A"
  ttl     = 60
  records = [aws_instance.etcd[count.index].private_ip]
}

# ---- discovery nodes ---------------------------------------------------------------

resource "aws_ssm_parameter" "discovery_config" {
  region = var.aws_region
  name   = "${local.param_prefix}/discovery.toml"
  type   = "SecureString"
  key_id = var.kms_key_arn
  value = templatefile("${path.module}/templates/discovery.toml.tftpl", {
    port                  = var.discovery_port
    heartbeat_interval_ms = var.heartbeat_interval_ms
    ttl_ms                = var.ttl_ms
    etcd_endpoints        = local.etcd_endpoints
    etcd_prefix           = var.etcd_prefix
  })
  tags = local.tags
}

resource "aws_instance" "discovery" {
  count                  = var.discovery_nodes
  region                 = var.aws_region
  ami                    = var.ami_id
  instance_type          = var.instance_type
  subnet_id              = element(var.private_subnet_ids, count.index)
  vpc_security_group_ids = [aws_security_group.discovery.id]
  iam_instance_profile   = aws_iam_instance_profile.discovery.name
  monitoring             = true
  ebs_optimized          = true

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

  user_data = templatefile("${path.module}/templates/discovery-user-data.sh.tftpl", {
    aws_region       = var.aws_region
    config_parameter = aws_ssm_parameter.discovery_config.name
    cluster_secret   = var.secret_names.cluster_token
    admin_secret     = var.secret_names.admin_token
  })
  user_data_replace_on_change = true

  tags = merge(local.tags, { Name = "tether-${local.discovery_names[count.index]}" })

  depends_on = [aws_route53_record.etcd]
}

resource "aws_route53_record" "discovery" {
  count   = var.discovery_nodes
  zone_id = var.private_zone_id
  name    = "${local.discovery_names[count.index]}.${var.private_zone_name}"
  type    = "A"
  ttl     = 60
  records = [aws_instance.discovery[count.index].private_ip]
}
