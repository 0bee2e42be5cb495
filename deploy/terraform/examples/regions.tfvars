# Three regions, two servers each, discovery in eu-west-1.
#   terraform -chdir=deploy/terraform plan -var-file=examples/regions.tfvars
# Replace the ids with your own (VPCs, subnets, images, hosted zone).

domain      = "example.com"
zone_id     = "Z0123456789EXAMPLE"
global_name = "api"
dns_ttl     = 60
home_region = "eu-west-1"

regions = {
  eu = {
    aws_region        = "eu-west-1"
    servers           = 2
    vpc_id            = "vpc-0eu0000000000000a"
    vpc_cidr          = "10.10.0.0/16"
    public_subnet_ids = ["subnet-0eu000000000000a1", "subnet-0eu000000000000b1"]
    ami_id            = "ami-0eu00000000000001"
  }
  us = {
    aws_region        = "us-east-1"
    servers           = 2
    vpc_id            = "vpc-0us0000000000000a"
    vpc_cidr          = "10.20.0.0/16"
    public_subnet_ids = ["subnet-0us000000000000a1", "subnet-0us000000000000b1"]
    ami_id            = "ami-0us00000000000001"
  }
  ap = {
    aws_region        = "ap-southeast-1"
    servers           = 2
    vpc_id            = "vpc-0ap0000000000000a"
    vpc_cidr          = "10.30.0.0/16"
    public_subnet_ids = ["subnet-0ap000000000000a1", "subnet-0ap000000000000b1"]
    ami_id            = "ami-0ap00000000000001"
  }
}

discovery = {
  vpc_id             = "vpc-0eu0000000000000a"
  vpc_cidr           = "10.10.0.0/16"
  private_subnet_ids = ["subnet-0eu000000000000c1", "subnet-0eu000000000000d1", "subnet-0eu000000000000e1"]
  ami_id             = "ami-0eu00000000000002"
  etcd_ami_id        = "ami-0eu00000000000003"
  etcd_members       = 3
  discovery_nodes    = 2
}

monitoring_cidrs = ["10.0.0.0/24"]

tokens = {
  issuer   = "https://api.example.com"
  audience = "example-app"
}
