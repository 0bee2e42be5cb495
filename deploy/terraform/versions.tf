terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.0 brings the per-resource `region` argument this module uses, so
      # one provider configuration serves every region.
      version = ">= 6.0"
    }
  }
}
