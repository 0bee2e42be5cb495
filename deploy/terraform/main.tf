# tether on AWS: the discovery tier in home_region, then one module
# instance per entry of var.regions. See docs/deploy.md.
#
# Secrets (key ring, cluster and admin tokens, TLS certificate and key) are
# Secrets Manager secrets created here EMPTY and replicated to every region;
# their values are put with the AWS CLI (docs/deploy.md), so they never
# appear in Terraform code, variables or state.

data "aws_caller_identity" "current" {}

locals {
  aws_regions     = toset(concat([var.home_region], [for r in var.regions : r.aws_region]))
  replica_regions = setsubtract(local.aws_regions, [var.home_region])
  # Names only (tether/keyring, tether/cluster-token, ...); the values are
  # put by the operator.
  secret_names = { for k in ["keyring", "cluster-token", "admin-token", "tls-cert", "tls-key"] : replace(k, "-", "_") => "tether/${k}" }
  vpcs = merge(
    { for k, r in var.regions : k => { id = r.vpc_id, region = r.aws_region, cidr = r.vpc_cidr } },
    { discovery = { id = var.discovery.vpc_id, region = var.home_region, cidr = var.discovery.vpc_cidr } },
  )
  vpc_cidrs = distinct([for v in values(local.vpcs) : v.cidr])
}

# ---- keys and secrets -----------------------------------------------------------

# The default key policy: the account administers and uses the key through
# IAM (the instance roles get kms:Decrypt on this key's ARN only).
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:a key policy's Resource "*" is the key itself; access is then granted per role in IAM
  #checkov:skip=CKV_AWS_356:a key policy's Resource "*" is the key itself, it cannot name other resources
  #checkov:skip=CKV_AWS_109:the account root principal is AWS's default key policy, delegating to IAM policies
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "tether" {
  for_each                = local.aws_regions
  region                  = each.key
  description             = "tether config and secrets (${each.key})"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_secretsmanager_secret" "tether" {
  #checkov:skip=CKV2_AWS_57:no rotation Lambda on purpose; key-ring rotation needs an overlap (add the new key, sign with it, drop the old one after the refresh lifetime) that docs/deploy.md walks through by hand
  for_each                = local.secret_names
  name                    = each.value
  description             = "tether ${each.key}; value put by the operator (docs/deploy.md)"
  kms_key_id              = aws_kms_key.tether[var.home_region].arn
  recovery_window_in_days = 30

  dynamic "replica" {
    for_each = local.replica_regions
    content {
      region     = replica.value
      kms_key_id = aws_kms_key.tether[replica.value].arn
    }
  }
}

# ---- private names for the discovery tier ----------------------------------------

resource "aws_route53_zone" "internal" {
  name    = var.internal_zone
  comment = "tether discovery tier (private)"

  dynamic "vpc" {
    for_each = { for k, v in local.vpcs : v.id => v... }
    content {
      vpc_id     = vpc.key
      vpc_region = vpc.value[0].region
    }
  }
}

module "discovery" {
  source = "./modules/discovery"

  aws_region         = var.home_region
  vpc_id             = var.discovery.vpc_id
  vpc_cidr           = var.discovery.vpc_cidr
  private_subnet_ids = var.discovery.private_subnet_ids
  client_cidrs       = distinct(concat(local.vpc_cidrs, var.monitoring_cidrs))
  ami_id             = var.discovery.ami_id
  etcd_ami_id        = var.discovery.etcd_ami_id
  instance_type      = var.discovery.instance_type
  etcd_members       = var.discovery.etcd_members
  discovery_nodes    = var.discovery.discovery_nodes
  private_zone_id    = aws_route53_zone.internal.zone_id
  private_zone_name  = var.internal_zone
  kms_key_arn        = aws_kms_key.tether[var.home_region].arn
  secret_names = {
    cluster_token = local.secret_names.cluster_token
    admin_token   = local.secret_names.admin_token
  }
}

# ---- regions ----------------------------------------------------------------------

module "region" {
  source   = "./modules/region"
  for_each = var.regions

  name              = each.key
  aws_region        = each.value.aws_region
  servers           = each.value.servers
  vpc_id            = each.value.vpc_id
  vpc_cidr          = each.value.vpc_cidr
  public_subnet_ids = each.value.public_subnet_ids
  ami_id            = each.value.ami_id
  instance_type     = each.value.instance_type
  geo_bias          = each.value.geo_bias
  monitoring_cidrs  = var.monitoring_cidrs

  domain      = var.domain
  zone_id     = var.zone_id
  global_name = var.global_name
  dns_ttl     = var.dns_ttl

  discovery_urls  = module.discovery.discovery_urls
  discovery_cidrs = [var.discovery.vpc_cidr]
  kms_key_arn     = aws_kms_key.tether[each.value.aws_region].arn
  secret_names = {
    keyring       = local.secret_names.keyring
    cluster_token = local.secret_names.cluster_token
    tls_cert      = local.secret_names.tls_cert
    tls_key       = local.secret_names.tls_key
  }
  tokens = var.tokens
  login  = var.login

  # The secrets (and their replicas) exist before any server boots.
  depends_on = [aws_secretsmanager_secret.tether]
}
