# `terraform test -var-file=examples/regions.tfvars` (scripts/check-deploy.sh):
# plans the three-region example against a mocked AWS provider. No account
# and no API call: it proves the configuration plans (every for_each and
# count expands, values pass the provider's own validation), not that AWS
# would accept it.

mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{}" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
}

run "three_regions_plan" {
  command = plan

  assert {
    condition     = length(module.region) == 3
    error_message = "the example has three regions"
  }
  assert {
    condition     = alltrue([for m in values(module.region) : length(m.health_check_ids) == 2])
    error_message = "one health check per server, two servers per region"
  }
  assert {
    condition     = module.region["eu"].server_urls == ["https://eu-1.example.com", "https://eu-2.example.com"]
    error_message = "per-server names are <region>-<n>.<domain>"
  }
  assert {
    condition     = length(module.discovery.etcd_endpoints) == 3 && length(module.discovery.discovery_urls) == 2
    error_message = "three etcd members and two discovery nodes"
  }
  assert {
    condition     = length(aws_secretsmanager_secret.tether) == 5 && length(aws_kms_key.tether) == 3
    error_message = "five secrets, and a KMS key in each of the three AWS regions"
  }
  assert {
    condition     = length(aws_route53_zone.internal.vpc) == 3
    error_message = "the private zone is associated with each distinct VPC"
  }
  assert {
    condition     = length(output.prometheus_targets.proxies) == 6 && length(output.prometheus_targets.discovery) == 2
    error_message = "scrape targets for six proxies and two discovery nodes"
  }
}
