# One provider configuration: regional resources name their region
# themselves (`region` argument, AWS provider >= 6). Credentials come from
# the environment (AWS_PROFILE, SSO, an assumed role), never from here.
provider "aws" {
  region = var.home_region

  default_tags {
    tags = var.tags
  }
}
